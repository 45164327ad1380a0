"""Every option of every command, given a value no run could use, is refused up front: exit 2, one
`error:` line that names the option (or the value given to it), nothing written, and (for commands that
load a model)
before the model loads. Each case runs the real CLI in a subprocess; the table must name every option,
so an option added later is considered here too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
import typer.main

from conftest import run_cli
from rewrite.cli import app

# Per command: option -> argument lists, each a bad use of that option (with what it needs beside it).
# {work} is a planned work dir with chatgpt run on it, {file} a plain file, {missing} a path that does not
# exist, {captions} a caption file, {set} a valid meta set file. An empty list: no value of it is bad (a
# flag, a free name).
BAD: dict[str, dict[str, list[list[str]]]] = {
    "shard": {
        "inputs": [["{missing}/x.parquet", "--out", "{new}"]],
        "--out": [["{captions}", "--out", "{file}"], ["{captions}", "--out", "{work}"]],
        "--num-shards": [["{captions}", "--out", "{new}", "--num-shards", "0"],
                         ["{captions}", "--out", "{new}", "--num-shards", "-2"]],
        "--rows-per-shard": [["{captions}", "--out", "{new}", "--rows-per-shard", "0"]],
        "--caption-column": [["{parquet}", "--out", "{new}", "--caption-column", "nope"]],
        "--key-column": [["{parquet}", "--out", "{new}", "--key-column", "nope"]],
        "--caption-field": [["{captions}", "--out", "{new}", "--caption-field", "caption"]],
        "--storage-option": [["{captions}", "--out", "{new}", "--storage-option", "novalue"]],
    },
    "run": {
        "--work": [["--work", "{missing}", "--source", "chatgpt"]],
        "--source": [["--source", "laion"], ["--source", ","], ["--source", "{missing}/mine.jsonl"]],
        "--meta-dir": [["--source", "chatgpt", "--meta-dir", "{missing}"]],
        "--shards": [["--shards", "9"], ["--shards", "x"], ["--shards", "1-0"]],
        "--engine": [["--engine", "gpt"]],
        "--model": [["--model", "{missing}/model"]],
        "--seed": [["--seed", "x"]],
        "--num-rewrites": [["--num-rewrites", "0"]],
        "--num-examples": [["--num-examples", "0"], ["--num-examples", "17"]],
        "--batch-size": [["--batch-size", "0"]],
        "--dtype": [["--dtype", "fp64"]],
        "--max-model-len": [["--max-model-len", "0"]],
        "--tensor-parallel-size": [["--engine", "vllm", "--tensor-parallel-size", "0"]],
        "--gpu-memory-utilization": [["--engine", "vllm", "--gpu-memory-utilization", "1.5"]],
        "--enforce-eager": [],
        "--engine-arg": [["--engine", "vllm", "--engine-arg", "novalue"]],
        "--base-url": [["--engine", "openai", "--base-url", "not-a-url"]],
        "--api": [["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api", "rest"]],
        "--concurrency": [["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "0"]],
        "--timeout": [["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--timeout", "0"]],
        "--request-retries": [["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--request-retries", "-1"]],
        "--unavailable-after": [["--unavailable-after", "0"]],
        "--retry-failed": [],
        "--chunk-rows": [["--chunk-rows", "0"]],
        "--scheduler": [["--scheduler", "fast"]],
        "--open-chunks": [["--open-chunks", "0"]],
        "--builders": [["--builders", "-1"]],
        "--max-attempts": [["--max-attempts", "0"]],
        "--min-faithfulness": [["--min-faithfulness", "1.5"]],
        "--temperature": [["--temperature", "0"]],
        "--top-p": [["--top-p", "0"], ["--top-p", "1.5"]],
        "--max-new-tokens": [["--max-new-tokens", "0"]],
        "--template": [["--template", "nope"]],
        "--dedup": [],
        "--max-caption-tokens": [["--max-caption-tokens", "0"]],
        "--example-sets": [["--example-sets", "-1"]],
        "--overwrite": [],
        "--progress": [],
        "--requeue-on-warning": [],
        "--stop-within": [["--stop-within", "-1"]],
        "--then-export": [["--then-export", "{work}"]],
        "--export-format": [["--then-export", "{new}", "--export-format", "zip"]],
        "--storage-option": [["--source", "chatgpt", "--storage-option", "=x"]],
    },
    "status": {
        "--work": [["--work", "{missing}"]],
        "--source": [["--source", "laion"]],
        "--json": [],
    },
    "export": {
        "--work": [["--work", "{missing}", "--out", "{new}"]],
        "--out": [["--out", "{work}"], ["--out", "{file}"]],
        "--source": [["--out", "{new}", "--source", "laion"]],
        "--format": [["--out", "{new}", "--format", "zip"]],
        "--shards": [["--out", "{new}", "--shards", "9"]],
        "--workers": [["--out", "{new}", "--workers", "0"]],
        "--image-column": [["--out", "{new}", "--format", "csv", "--image-column", "nope"]],
        "--extract-images": [["--out", "{new}", "--format", "csv", "--extract-images", "{file}"],
                             ["--out", "{new}", "--format", "hf", "--extract-images", "{new2}"]],
        "--captions-only": [["--out", "{new}", "--format", "wds", "--captions-only"]],
        "--views": [["--out", "{new}", "--format", "hf", "--views", "caption_chatgpt"]],
        "--separator": [["--out", "{new}", "--format", "csv", "--captions-only", "--separator", sep] for sep in
                        ("", "ab", '"', "\\n", "\\x")],
        "--replace-json-fields": [["--out", "{new}", "--format", "hf", "--replace-json-fields"]],
        "--allow-missing": [],
        "--overwrite": [],
        "--progress": [],
        "--storage-option": [["--out", "{new}", "--storage-option", "novalue"]],
    },
    "report": {
        "--work": [["--work", "{missing}", "--out", "{new}"]],
        "--export": [["--export", "{missing}", "--out", "{new}"]],
        "--out": [["--work", "{work}", "--out", "{work}"], ["--work", "{work}", "--out", "{file}"]],
        "--source": [["--work", "{work}", "--out", "{new}", "--source", "laion"]],
        "--embedding-model": [["--work", "{work}", "--out", "{new}", "--embedding-model", "{missing}"]],
        "--sample-rows": [["--work", "{work}", "--out", "{new}", "--sample-rows", "-1"]],
        "--seed": [],
        "--overwrite": [],
        "--progress": [],
    },
    "demo": {
        "--out": [["--out", "{file}"]],
        "--source": [["--out", "{new}", "--source", "laion"]],
        "--template": [["--out", "{new}", "--template", "nope"]],
        "--min-faithfulness": [["--out", "{new}", "--min-faithfulness", "2"]],
        "--engine": [["--out", "{new}", "--engine", "gpt"]],
        "--model": [["--out", "{new}", "--model", "{missing}/model"]],
    },
    "meta show": {"source": [["laion"], ["{missing}/x.jsonl"]]},
    "meta validate": {"files": [["{missing}/x.jsonl"]], "--num-examples": [["--num-examples", "0"]]},
    "meta import-laclip": {
        "utils_py": [["{missing}/utils.py", "--out", "{new}"]],
        "--out": [["{file}", "--out", "{file}"]],
        "--overwrite": [],
    },
    "meta import-coco": {
        "annotations": [["{missing}/captions.json", "--out", "{new}/c.jsonl"]],
        "--out": [["{coco}", "--out", "{set}"]],
        "--groups": [["{coco}", "--out", "{new}/c.jsonl", "--groups", "0"]],
        "--seed": [["{coco}", "--out", "{new}/c.jsonl", "--seed", "x"]],
        "--captions-per-group": [["{coco}", "--out", "{new}/c.jsonl", "--captions-per-group", "1"]],
        "--overwrite": [],
    },
    "meta generate": {
        "--from": [["--from", "{missing}/c.txt", "--out", "{new}/g.jsonl"]],
        "--out": [["--from", "{captions}", "--out", "{set}"]],
        "--count": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--count", "0"]],
        "--seed": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--seed", "x"]],
        "--instruction": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--instruction", ""]],
        "--engine": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--engine", "gpt"]],
        "--model": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--model", "{missing}/model"]],
        "--dtype": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--dtype", "fp64"]],
        "--max-model-len": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--max-model-len", "0"]],
        "--engine-arg": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--engine", "vllm", "--engine-arg", "x"]],
        "--base-url": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--engine", "openai", "--base-url", "x"]],
        "--api": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--engine", "openai", "--base-url",
                   "http://127.0.0.1:9/v1", "--api", "rest"]],
        "--concurrency": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--engine", "openai", "--base-url",
                           "http://127.0.0.1:9/v1", "--concurrency", "0"]],
        "--max-attempts": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--max-attempts", "0"]],
        "--temperature": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--temperature", "0"]],
        "--top-p": [["--from", "{captions}", "--out", "{new}/g.jsonl", "--top-p", "2"]],
        "--overwrite": [],
    },
    "slurm submit": {
        "--work": [["--work", "{missing}", "--source", "chatgpt", "--dry-run"]],
        "--source": [["--source", "laion", "--dry-run"]],
        "--shards": [["--shards", "9", "--dry-run"]],
        "--parallel": [["--parallel", "0", "--dry-run"]],
        "--tasks": [["--tasks", "0", "--dry-run"]],
        "--partition": [],
        "--time": [["--time", "soon", "--dry-run"]],
        "--gpus": [["--gpus", "-1", "--dry-run"]],
        "--cpus": [["--cpus", "0", "--dry-run"]],
        "--mem": [["--mem", "lots", "--dry-run"]],
        "--account": [],
        "--sbatch": [["--sbatch", "--qos=high\n#SBATCH --qos=low", "--dry-run"], ["--sbatch", " ", "--dry-run"]],
        "--then-export": [["--then-export", "{work}", "--dry-run"]],
        "--export-format": [["--then-export", "{new}", "--export-format", "zip", "--dry-run"]],
        "--dry-run": [],
    },
    "slurm failed": {
        "--work": [["--work", "{missing}", "--source", "chatgpt"]],
        "--source": [["--source", "laion"]],
        "--lines": [["--lines", "-1"]],
    },
}

# What each command is given before the case's own arguments (a case may override it: later wins).
BASE = {
    "run": ["--work", "{work}", "--source", "chatgpt", "--no-progress"],
    "status": ["--work", "{work}"],
    "export": ["--work", "{work}", "--no-progress"],
    "demo": [],
    "meta generate": ["--count", "2"],  # the caption file holds 3
    "slurm submit": ["--work", "{work}", "--source", "chatgpt"],
    "slurm failed": ["--work", "{work}", "--source", "chatgpt"],
}


def commands() -> dict[str, click.Command]:
    """Every command of the CLI by its full name ("meta show"), as click sees it."""
    root = typer.main.get_command(app)
    found = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(click.Context(group)):
            command = group.get_command(click.Context(group), name)
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command
    walk(root, "")
    return found


def option_names(command: click.Command) -> list[str]:
    return [p.opts[0] if p.param_type_name == "option" else p.name for p in command.params]


def test_the_table_names_every_option_of_every_command():
    table = {name: sorted(BAD.get(name, {})) for name in commands()}
    assert table == {name: sorted(option_names(command)) for name, command in commands().items()}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("options")
    captions = root / "captions.txt"
    captions.write_text("a red kite over the beach\ntwo cats asleep on a sofa\nrain on a window\n", encoding="utf-8")
    work = root / "work"
    run_cli("shard", captions, "--out", work, "--num-shards", "2")
    run_cli("run", "--work", work, "--source", "chatgpt", "--no-progress")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a dog"], "key": ["k"]}), root / "rows.parquet")
    (root / "file").write_text("not a folder")
    (root / "mine.jsonl").write_text("".join(json.dumps({"source": f"s {i}", "target": f"a target {i}"}) + "\n"
                                             for i in range(4)), encoding="utf-8")
    (root / "coco.json").write_text(json.dumps({"annotations": [{"image_id": i // 5, "caption": f"caption {i}"}
                                                                for i in range(20)]}), encoding="utf-8")
    return {"work": str(work), "file": str(root / "file"), "missing": str(root / "missing"),
            "captions": str(captions), "parquet": str(root / "rows.parquet"), "set": str(root / "mine.jsonl"),
            "coco": str(root / "coco.json"), "root": str(root)}


def cases() -> list[tuple[str, str, list[str]]]:
    return [(name, option, args) for name, options in BAD.items() for option, bad in options.items() for args in bad]


def test_every_bad_value_is_refused_up_front(places):
    """One line naming the option, exit 2, no traceback, no model loaded, and nothing new on disk."""
    def one(i: int, case: tuple[str, str, list[str]]) -> tuple[tuple, subprocess.CompletedProcess, list[str], dict]:
        name, option, args = case
        fill = {**places, "new": f"{places['root']}/new-{i}", "new2": f"{places['root']}/new2-{i}"}
        argv = [a.format(**fill) for a in BASE.get(name, []) + args]
        proc = subprocess.run([sys.executable, "-m", "rewrite.cli", *name.split(), *argv], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": "sk-test"})
        return case, proc, [fill[n] for n in ("new", "new2") if os.path.exists(fill[n])], fill

    before = snapshot(Path(places["root"]))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda item: one(*item), enumerate(cases())))
    wrong = []
    for (name, option, args), proc, created, fill in results:
        said = proc.stderr.strip().splitlines()
        given = args[args.index(option) + 1] if option in args[:-1] else args[0] if not option.startswith("--") else None
        value = given.format(**fill) if given and "{" in given else given
        one_line = len(said) == 1 and said[0].startswith("error: ") and not proc.stdout.strip()
        names_it = one_line and (option in said[0] or bool(value and value in said[0]))
        if proc.returncode != 2 or not one_line or not names_it or created:
            wrong.append(f"rewrite {name} {' '.join(args)}: exit {proc.returncode}, created {created}, "
                         f"said {proc.stderr.strip()[-300:]!r}")
    assert not wrong, f"{len(wrong)} of {len(results)} bad values not refused up front:\n" + "\n".join(wrong)
    assert snapshot(Path(places["root"])) == before  # nothing that was there changed, nothing added


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` but the cases' own new paths: (size, mtime)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if not p.relative_to(root).parts[0].startswith(("new-", "new2-"))}
