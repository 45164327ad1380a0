"""A plain (non-editable) install finds its templates, meta sets and demo captions, and holds every module
(a subpackage left out of pyproject's list is missing from it: seen with rewrite.inputs and rewrite.exports,
which only an editable install had)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_copy_finds_its_data_files(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
    code = (
        "import rewrite, rewrite.meta as m, rewrite.rewriting.prompt as p, rewrite.launch.demo as d, importlib, pkgutil;"
        "assert 'site' in rewrite.__file__, rewrite.__file__;"
        "[importlib.import_module(i.name) for i in pkgutil.walk_packages(rewrite.__path__, 'rewrite.')];"
        "import rewrite.exports.wds, rewrite.inputs.wds;"
        "print(len(m.load('coco')), p.load_template().name, sum(1 for _ in open(d.demo_captions())))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["16", "laclip", "240"]
