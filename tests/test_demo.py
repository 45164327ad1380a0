"""The README's first command: `rewrite demo` on the embedded model, end to end."""
import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow  # the 240 shipped captions on the CPU: a minute or two


def test_the_demo_rewrites_exports_and_reports(tmp_path):
    out = tmp_path / "demo"
    said = run_cli("demo", "--out", out).stdout
    assert f"dataset: {(out / 'dataset').resolve()}  (240 rows" in said
    assert f"quality report: {(out / 'report' / 'report.html').resolve()}" in said
    shown = [line for line in said.splitlines() if line.startswith("    -> ")]
    assert len(shown) == 8 and all(line[7:].strip() for line in shown)
    figures = json.loads((out / "report" / "report.json").read_text())["sets"]["chatgpt"]
    assert figures["rows"] == 240 and figures["valid_rate"] > 0.9 and 0 < figures["faithfulness"]["mean"] < 1
    assert (out / "report" / "report.html").read_text().count("data:image/png;base64,") >= 3
