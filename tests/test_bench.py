"""The benchmark's method parsing (bench/run.py): pure functions, tested directly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).resolve().parent.parent / "bench" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_methods_split_at_engine_names_and_keep_their_modifiers():
    assert bench.split_methods("reference,vllm:sets=16,block=128,no-stop,transformers,no-sort") == [
        "reference", "vllm:sets=16,block=128,no-stop", "transformers:no-sort"]


def test_modifiers_map_to_engine_run_and_schedule_options():
    engine, opts, config, schedule = bench.parse_method("vllm:sets=16,block=32,no-prefix,no-group")
    assert engine == "vllm" and config == {"example_sets": 16} and schedule == {"group_by_examples": False}
    assert opts["engine_args"] == ["block_size=32", "enable_prefix_caching=false"]
    assert bench.parse_method("transformers:no-prefix,no-stop")[1] == {"prefix_reuse": False, "stop_at_newline": False}
    with pytest.raises(SystemExit, match="unknown modifier 'fast'"):
        bench.parse_method("vllm:fast")
