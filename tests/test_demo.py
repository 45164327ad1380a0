"""The README's first command, as written: install into a fresh venv and run `rewrite demo`, end to end."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewrite.launch import demo

pytestmark = pytest.mark.slow  # a venv from PyPI (torch from this machine's disk) and 240 captions on the CPU

ROOT = Path(__file__).resolve().parent.parent
# This machine's pip configuration names extra index folders that do not hold every package, and pip says
# so for each package it looks up, whatever is installed: a line about the machine, not the project.
MACHINE_PIP_CONFIG = re.compile(r"^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$")


def readme_demo_command() -> str:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("pip install") and line.endswith("rewrite demo")]
    assert len(lines) == 1, lines
    return lines[0]


def complaints(text: str, data: set[str] = frozenset()) -> list[str]:
    """Lines (progress bars split at carriage returns) that warn, report an error (`ERROR:`, `error:`,
    `ValueError`, not "terror") or hold a traceback; the lines in `data` (captions and rewrites the demo
    shows, which may say "warning") are not judged."""
    lines = re.split(r"[\r\n]", text)
    return [line for line in lines if re.search(r"(?i:warning|traceback|\berror)|[a-z]Error\b", line)
            and line not in data and not MACHINE_PIP_CONFIG.match(line)]


def test_the_readme_demo_command_installs_and_runs_cleanly(tmp_path):
    """A newcomer's first run: the install prints no ERROR or WARNING (pip's dependency check included), the
    demo none either (no deprecation warning of a newer transformers), and the demo says in one line what
    its rewrites were made with, shows the first rows, and writes the dataset and the report."""
    checkout = tmp_path / "rewrite"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        (checkout / name.decode()).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name.decode()).write_bytes((ROOT / name.decode()).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_ROOT_USER_ACTION")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    first = subprocess.run(["bash", "-c", readme_demo_command()], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=2400)
    said = first.stdout + first.stderr
    assert first.returncode == 0, said[-3000:]
    demo_said = first.stdout[first.stdout.index("\nused: ") + 1:]  # what `rewrite demo` printed, after pip's lines
    shown = set(demo_said.splitlines()[1:17])
    assert complaints(said, shown) == []
    out = checkout / "rewrite-demo"
    settings = json.loads((out / "work" / "rewrites" / "chatgpt" / "settings.json").read_text())
    assert (settings["template"], settings.get("min_faithfulness")) == (demo.TEMPLATE, demo.MIN_FAITHFULNESS)
    assert demo_said.splitlines()[0] == (
        f"used: SmolLM2-135M-Instruct (transformers), {demo.TEMPLATE} template, 3 examples per caption from the "
        f"chatgpt set, faithfulness gate {demo.MIN_FAITHFULNESS} (a rewrite scoring below it is tried again, up to "
        f"3 attempts)")
    assert f"dataset: {(out / 'dataset').resolve()}  (240 rows" in demo_said
    assert f"quality report: {(out / 'report' / 'report.html').resolve()}" in demo_said
    captions = (ROOT / "demo" / "captions.txt").read_text().splitlines()
    lines = demo_said.splitlines()
    assert lines[1:17:2] == [f"  {c}" for c in captions[:8]]  # the first rows, not chosen ones
    assert all(line.startswith("    -> ") and line[7:].strip() for line in lines[2:18:2])
    figures = json.loads((out / "report" / "report.json").read_text())["sets"]["chatgpt"]
    assert figures["rows"] == 240 and figures["valid_rate"] > 0.9 and 0 < figures["faithfulness"]["mean"] < 1
    assert (out / "report" / "report.html").read_text().count("data:image/png;base64,") >= 3
    # Again: what is done is reused (no model loads), and the same is shown, cleanly.
    again = subprocess.run([str(venv / "bin" / "rewrite"), "demo"], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and complaints(again.stdout + again.stderr, shown) == [], again.stderr[-3000:]
    assert again.stdout == demo_said
