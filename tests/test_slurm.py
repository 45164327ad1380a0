"""Slurm without a cluster: which shards an array task takes, the script, and dry-run submissions."""
from __future__ import annotations

import pytest

from conftest import run_cli
from rewrite.launch import slurm


@pytest.mark.parametrize("shards, count, expected", [
    (list(range(8)), 4, [[0, 1], [2, 3], [4, 5], [6, 7]]),  # fewer tasks than shards
    (list(range(4)), 4, [[0], [1], [2], [3]]),  # one each
    (list(range(10)), 4, [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]),  # uneven: sizes differ by one at most
    ([3, 7, 9], 5, [[], [3], [], [7], [9]]),  # more tasks than shards: some get none
])
def test_tasks_cover_every_shard_once(shards, count, expected):
    shares = [slurm.task_share(shards, i, count) for i in range(count)]
    assert shares == expected
    assert sorted(s for share in shares for s in share) == sorted(shards)


def test_more_shards_than_the_array_limit():
    shards = list(range(2500))
    shares = [slurm.task_share(shards, i, 1001) for i in range(1001)]
    assert sorted(s for share in shares for s in share) == shards
    assert {len(s) for s in shares} == {2, 3}
    with pytest.raises(slurm.SlurmError, match="outside 0-1000"):
        slurm.task_share(shards, 1001, 1001)


def test_this_task_takes_its_share_of_the_named_shards():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert slurm.this_task_shards([0, 1, 2, 3], env) == ([2, 3], (1, 2))
    assert slurm.this_task_shards([5], env) == ([5], None)  # one named shard is taken as it is
    assert slurm.this_task_shards([0, 1, 2], {}) == ([0, 1, 2], None)  # not in an array


def test_array_task_from_the_environment():
    assert slurm.array_task({}) is None
    assert slurm.array_task({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "16",
                             "SLURM_ARRAY_TASK_MIN": "0"}) == (5, 16)
    assert slurm.array_task({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4",
                             "SLURM_ARRAY_TASK_MIN": "10"}) == (2, 4)


def test_script(tmp_path):
    res = slurm.Resources(partition="gpu", time="4:00:00", gpus=1, cpus=8, mem="64G", account="proj",
                          extra=["--qos=high", "constraint=a100"])
    text = slurm.render_script(tmp_path, "coco", list(range(128)), tasks=16, parallel=4, resources=res,
                               run_args=["--engine", "vllm", "--model", "/models/llama 7b"], python="/usr/bin/python3")
    lines = text.splitlines()
    for expected in ["#SBATCH --array=0-15%4", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
                     "#SBATCH --open-mode=append", f"#SBATCH --output={tmp_path.resolve()}/slurm/logs/%A_%a.log",
                     "#SBATCH --partition=gpu", "#SBATCH --time=4:00:00", "#SBATCH --gpus-per-task=1",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G", "#SBATCH --account=proj",
                     "#SBATCH --qos=high", "#SBATCH --constraint=a100"]:
        assert expected in lines
    run = next(line for line in lines if " -m rewrite.cli run " in line)
    assert run.startswith("/usr/bin/python3 -m rewrite.cli run --work ") and "--source coco --shards 0-127" in run
    assert run.endswith("--no-progress --requeue-on-warning --engine vllm --model '/models/llama 7b' &")
    assert "trap 'kill -USR1 $child' USR1" in lines and "trap 'kill -TERM $child' TERM" in lines
    assert lines[0] == "#!/bin/bash" and text.count("#SBATCH --array") == 1


def test_dry_run_sends_only_unfinished_shards(tmp_path, text_file):
    work = tmp_path / "w"
    run_cli("shard", text_file, "--out", work, "--num-shards", "4")
    run_cli("run", "--work", work, "--source", "bard", "--shards", "1", "--no-progress")
    proc = run_cli("slurm", "submit", "--work", work, "--source", "bard", "--parallel", "2", "--dry-run",
                   "--", "--seed", "3")
    assert "#SBATCH --array=0-2%2" in proc.stdout and "--shards 0,2-3" in proc.stdout
    assert "--no-progress --requeue-on-warning --seed 3 &" in proc.stdout
    assert not (work / "slurm" / "jobs.jsonl").exists()  # nothing submitted
    both = run_cli("slurm", "submit", "--work", work, "--source", "bard,human", "--dry-run").stdout
    assert "#SBATCH --job-name=rewrite-bard+human" in both and "--source bard,human --shards 0-3" in both


def test_dry_run_of_many_shards_caps_the_array(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"caption {i}\n" for i in range(1500)))
    work = tmp_path / "w"
    run_cli("shard", path, "--out", work, "--num-shards", "1500")
    proc = run_cli("slurm", "submit", "--work", work, "--source", "coco", "--dry-run", "--parallel", "64")
    assert "#SBATCH --array=0-1000%64" in proc.stdout and "--shards 0-1499" in proc.stdout


def test_an_array_task_takes_its_share_of_the_spec(tmp_path, text_file):
    work = tmp_path / "w"
    run_cli("shard", text_file, "--out", work, "--num-shards", "4")
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    proc = run_cli("run", "--work", work, "--source", "bard", "--shards", "0-3", "--no-progress", env=env)
    assert "array task 1 of 2: shards 2-3" in proc.stderr
    done = sorted(p.name for p in (work / "rewrites" / "bard").glob("*.stats.json"))
    assert done == ["00002.stats.json", "00003.stats.json"]
