"""The benchmarks: bench/run.py's method parsing (pure functions, tested directly), and bench/export_wds.py
and bench/scheduler.py run at toy size."""
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
    engine, opts, _, schedule = bench.parse_method("vllm:chunked,dtype=bfloat16,unseeded,arg=max_num_seqs=64")
    assert bench.parse_method("transformers:stream")[3] == {"streaming": True}
    assert schedule == {"streaming": False} and opts == {"dtype": "bfloat16", "per_request_seeds": False,
                                                         "engine_args": ["max_num_seqs=64"]}
    with pytest.raises(SystemExit, match="unknown modifier 'fast'"):
        bench.parse_method("vllm:fast")


def test_export_benchmark_runs_end_to_end_at_small_size(tmp_path):
    """bench/export_wds.py at toy size: it exports for real, checks its output, and writes its table."""
    import json
    import subprocess
    import sys

    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "export_wds.py"),
                           "--tars", "2", "--samples", "20", "--image-kb", "2", "--plan-tars", "4", "--repeats", "1",
                           "--workers", "2", "--tmp-dir", str(tmp_path), "--out-json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["throughput"]["mb_per_s"]) == {"copy", "copy_fsync", "copy_userspace", "export", "export_workers2"}
    assert result["plan"]["stats"]["tars_opened"] == 0
    assert "export `--workers 2` / copy" in out.with_suffix(".md").read_text()


def test_scheduler_benchmark_runs_both_schedulers_at_small_size(tmp_path):
    """bench/scheduler.py --quick on a few captions: both schedulers drive the simulated GPU through the
    real runner to the end, and the last line is the default configuration in its documented form."""
    import json
    import re
    import subprocess
    import sys

    out = tmp_path / "s.json"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "scheduler.py"),
                           "--quick", "--captions", "300", "--out-json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in results] == ["old", "stream"]
    for r in results:
        assert r["captions"] == 300 and r["ok"] + r["failed"] == 300 and 0 < r["busy"] <= 1 and 0 < r["occupancy"] <= 1
        assert r["bound_requests"] == r["requests"] and 0 < r["bound_occupancy"] <= 1  # the bound ran the run's work
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"old: busy=[01]\.\d{3} .*occupancy=[01]\.\d\d .* stream: busy=[01]\.\d{3} .*occupancy=[01]\.\d\d .*", last), last


def test_the_zero_cpu_bound_steps_the_runs_work_as_the_simulated_core_does():
    """bench/scheduler.py's bound: full batches while work waits, each later attempt joining at the step
    its predecessor ends, and steps of t0 + t1 x running + the joining prompts' prefill."""
    spec = importlib.util.spec_from_file_location("bench_scheduler", Path(__file__).resolve().parents[1] / "bench" / "scheduler.py")
    scheduler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scheduler)
    full = scheduler.zero_cpu_bound([[(10, 0)]] * 512, 256, 0.004, 0.001, 0.0)
    assert (full["steps"], full["occupancy"]) == (20, 1.0) and full["seconds"] == pytest.approx(20 * (0.004 + 0.256))
    # one rewrite rejected once: its second attempt (5 tokens) runs alone after the first wave of 10 steps
    tail = scheduler.zero_cpu_bound([[(10, 3), (5, 4)]] + [[(10, 0)]] * 255, 256, 0.004, 0.001, 0.5)
    assert (tail["steps"], tail["occupied"]) == (15, 10 * 256 + 5)
    assert tail["seconds"] == pytest.approx(15 * 0.004 + (10 * 256 + 5) * 0.001 + (3 + 4) * 0.5)
    assert tail["occupancy"] == pytest.approx((10 * 256 + 5) / 15 / 256)
