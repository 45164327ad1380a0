"""Slurm array jobs: the batch script, which shards an array task takes, submission and job states.

`rewrite slurm submit` writes WORK/slurm/<source>-<time>.sbatch and submits it as an array of tasks,
each running `rewrite run` on its share of the unfinished shards. A task's share is computed inside
the task from SLURM_ARRAY_TASK_ID / _MIN / _COUNT (`task_share`), so 16 tasks can cover 128 shards and
an array never needs more tasks than the cluster's MaxArraySize allows. The script forwards the
warning signal (`--signal=B:USR1@...`) to `rewrite run`, which commits its chunk, requeues its own task and exits
75; the requeued task resumes from the committed chunks. Job ids
go to WORK/slurm/jobs.jsonl, logs to WORK/slurm/logs/<array job>_<task>.log.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..workdir import atomic, done, layout
from ..workdir.manifest import format_shard_spec, load_manifest, parse_shard_spec
from .. import defaults, exports, meta, remote, stop, storage
from ..exports.export import check_out_folder

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize: task indices 0-1000
WARN_SECONDS = 300  # the warning signal comes this long before the time limit


class SlurmError(RuntimeError):
    pass


def task_share(shards: Sequence[int], index: int, count: int) -> list[int]:
    """The contiguous slice of `shards` that array task `index` of `count` takes (balanced: sizes
    differ by at most one; tasks beyond the number of shards get none)."""
    if not 0 <= index < count:
        raise SlurmError(f"array task {index} is outside 0-{count - 1}")
    n = len(shards)
    return list(shards[index * n // count : (index + 1) * n // count])


def this_task_shards(named: Sequence[int], environ: Mapping[str, str]) -> tuple[list[int], tuple[int, int] | None]:
    """The shards this process runs of the `named` ones: its share inside an array task (with the task's
    (index, count)), else all of them (and None)."""
    task = array_task(environ)
    if task is None or len(named) <= 1:
        return list(named), None
    return task_share(named, *task), task


def requeue_after_warning(environ: Mapping[str, str]) -> str:
    """After a run stopped on SIGUSR1 (the time-limit warning): requeue this job so it resumes from its
    committed chunks; returns the job id. Slurm answers the requeue with SIGTERM to this job, which is
    ignored from here on: the run has stopped already, and exits with its own code."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return requeue_self(environ)


def array_task(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(index from 0, task count) of the array task this process runs in, or None outside one."""
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task = int(environ["SLURM_ARRAY_TASK_ID"])
    first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
    return task - first, int(environ["SLURM_ARRAY_TASK_COUNT"])


@dataclass
class Resources:
    """What each array task asks Slurm for (None: the cluster's default)."""

    partition: str | None = None
    time: str | None = None  # e.g. 4:00:00
    gpus: int | None = None  # per task
    cpus: int | None = None  # per task
    mem: str | None = None  # per task, e.g. 64G
    account: str | None = None
    extra: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. "--qos=high"

    def __post_init__(self) -> None:
        """Values Slurm would refuse, or that would break the script's lines, are refused before it is written."""
        for option, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not _NAME.fullmatch(value):
                raise SlurmError(f"{option} {value!r}: a Slurm name has no spaces, quotes or control characters")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise SlurmError(f"--time {self.time!r}: use a Slurm time limit such as 30, 4:00:00, 1-12 or 2-00:00:00")
        for option, value in (("--gpus", self.gpus), ("--cpus", self.cpus)):
            if value is not None and value < 1:
                raise SlurmError(f"{option} must be >= 1, got {value}")
        if self.mem is not None and not _MEM.fullmatch(self.mem):
            raise SlurmError(f"--mem {self.mem!r}: use a Slurm memory size such as 64G or 16000M")
        for line in self.extra:
            if not line.strip() or any(c in line for c in "\r\n"):
                raise SlurmError(f"--sbatch {line!r}: give an sbatch option on one line, e.g. --sbatch=--qos=high")


_NAME = re.compile(r"[^\s'\"\\\x00-\x1f\x7f]+")
_TIME = re.compile(r"(?i)(?:\d+-\d+(?::\d+){0,2}|\d+(?::\d+){0,2}|unlimited|infinite)")
_MEM = re.compile(r"(?i)\d+[kmgt]?")


def render_script(work: Path, source: str, shards: Sequence[int], tasks: int, parallel: int,
                  resources: Resources, run_args: Sequence[str], warn_seconds: int = WARN_SECONDS,
                  python: str = sys.executable, name: str | None = None) -> str:
    """The sbatch script: an array of `tasks` tasks, at most `parallel` at a time, each running
    `rewrite run` on its share of `shards`. `source` as `rewrite run` takes it; `name`, the set's name."""
    work = Path(work).resolve()
    logs = work / "slurm" / "logs"
    lines = ["#!/bin/bash", f"#SBATCH --job-name=rewrite-{name or source}", f"#SBATCH --array=0-{tasks - 1}%{parallel}",
             "#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{warn_seconds}", "#SBATCH --open-mode=append",
             f"#SBATCH --output={logs}/%A_%a.log"]
    for flag, value in (("partition", resources.partition), ("time", resources.time),
                        ("gpus-per-task", resources.gpus), ("cpus-per-task", resources.cpus),
                        ("mem", resources.mem), ("account", resources.account)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {x if x.startswith('-') else '--' + x}" for x in resources.extra]
    command = [python, "-m", "rewrite.cli", "run", "--work", str(work), "--source", source,
               "--shards", format_shard_spec(shards), "--no-progress", "--requeue-on-warning", *run_args]
    lines += [
        "",
        "# Written by `rewrite slurm submit`. Each task takes its share of --shards (from SLURM_ARRAY_TASK_ID).",
        'echo "rewrite: task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (restart ${SLURM_RESTART_COUNT:-0}) '
        'on $(hostname) at $(date -Is)"',
        " ".join(shlex.quote(c) for c in command) + " &",
        "child=$!",
        "# The time-limit warning (to this shell) or a requeue/cancel (SIGTERM): rewrite commits its chunk and",
        f"# exits {stop.EXIT_CODE}; after the warning it requeues this task itself (--requeue-on-warning).",
        "trap 'kill -USR1 $child' USR1",
        "trap 'kill -TERM $child' TERM",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; rc=$?',
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def requeue_self(environ: Mapping[str, str]) -> str:
    """Ask Slurm to requeue the job this process runs in; returns its id."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        raise SlurmError("--requeue-on-warning: not inside a Slurm job (no SLURM_JOB_ID)")
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SlurmError(f"scontrol requeue {job} failed: {proc.stderr.strip()}")
    return job


def max_array_size() -> int:
    """The cluster's MaxArraySize (Slurm's default when scontrol cannot tell)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    for line in out.splitlines():
        if line.split("=")[0].strip() == "MaxArraySize":
            return int(line.split("=")[1])
    return DEFAULT_MAX_ARRAY_SIZE


def _sbatch(args: Sequence[str]) -> str:
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: submit from a Slurm login node (or use --dry-run)")
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def _refuse_secret_options(run_args: Sequence[str]) -> None:
    """A `--storage-option` for the tasks would be kept in their script and in jobs.jsonl: only options
    that hold no secret may go there (credentials reach the tasks through the environment)."""
    for i, arg in enumerate(run_args):
        if arg == "--storage-option":
            pair = run_args[i + 1] if i + 1 < len(run_args) else ""
        elif arg.startswith("--storage-option="):
            pair = arg.split("=", 1)[1]
        else:
            continue
        name = pair.split("=", 1)[0].strip()
        if name not in remote.SAFE_OPTIONS:
            raise SlurmError(f"--storage-option {name}: the job script and WORK/slurm/jobs.jsonl would keep its value; "
                             "give credentials to the tasks through the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, "
                             "...), which Slurm passes on (options that hold no secret: "
                             f"{', '.join(remote.SAFE_OPTIONS)})")


def submit(work: str | Path, source: str, shards: Sequence[int], *, parallel: int, resources: Resources,
           run_args: Sequence[str] = (), tasks: int | None = None, export_to: str | None = None,
           export_format: str = "hf", dry_run: bool = False, max_array: int | None = None) -> dict:
    """Write the script for the unfinished ones among `shards` and submit it (unless dry_run). With
    `export_to`, each task then exports its own shards there (the last to finish publishes)."""
    w = layout.Work(work)
    manifest = load_manifest(w)
    _refuse_secret_options(run_args)
    if export_to:
        export_to = export_to if storage.is_remote(export_to) else str(Path(export_to).resolve())
        check_out_folder(storage.location(export_to), w, manifest, "--then-export")  # refused now, not after every task ran
        exports.named(export_format, "--export-format")
        run_args = [*run_args, "--then-export", export_to, "--export-format", export_format]
    if parallel < 1:
        raise SlurmError(f"--parallel must be >= 1, got {parallel}")
    if tasks is not None and tasks < 1:
        raise SlurmError(f"--tasks must be >= 1, got {tasks}")
    sources = defaults.source_list(source)
    names = [meta.source_name(s) for s in sources]
    name = "+".join(names)  # one set's name, or the sets of one array job (each task runs them all)
    # Tasks load a custom set from its file, wherever they start.
    run_source = ",".join(str(Path(s).resolve()) if meta.is_file_source(s) else n for s, n in zip(sources, names))
    todo = sorted({s for n in names for s in done.pending_shards(w, n, shards)})
    if not todo:
        return {"job_id": None, "source": name, "shards": [], "tasks": 0, "script": None}
    limit = max_array or (max_array_size() if not dry_run else DEFAULT_MAX_ARRAY_SIZE)
    tasks = min(tasks or len(todo), len(todo), limit)
    script = render_script(w.root, run_source, todo, tasks, min(parallel, tasks), resources, run_args, name=name)
    folder = w.root / "slurm"
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    record = {"source": name, "sources": names, "shards": format_shard_spec(todo), "tasks": tasks, "script": str(path),
              "resources": asdict(resources), "run_args": list(run_args)}
    if dry_run:
        return {**record, "job_id": None, "script_text": script}
    storage.make_dirs(folder / "logs")
    atomic.write_text(path, script)
    job_id = _sbatch([str(path)])
    record.update(job_id=job_id, submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    with storage.open_file(folder / "jobs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def submissions(work: str | Path, source: str | None = None) -> list[dict]:
    """The submissions recorded in WORK/slurm/jobs.jsonl, oldest first."""
    path = layout.Work(work).root / "slurm" / "jobs.jsonl"
    if not storage.exists(path):
        return []
    records = []
    for lineno, line in enumerate(storage.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SlurmError(f"{path}:{lineno}: not a job record (the file is damaged)") from None
    return [r for r in records if source is None or source in r.get("sources", [r["source"]])]


def task_states(job_ids: Sequence[str]) -> dict[str, str]:
    """'<array job>_<task>' -> state for the tasks Slurm still knows (pending, running, ...); a task
    that ended and left the queue is absent. Empty when squeue is unavailable."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"],
                          capture_output=True, text=True, timeout=60)
    states = {}
    for line in proc.stdout.splitlines():
        if " " in line:
            task, state = line.split(None, 1)
            states[task] = state.strip()
    return states


def recorded_shards(record: dict) -> list[int]:
    """The shards a recorded submission sent (an explicit spec, as written by `submit`)."""
    return parse_shard_spec(record["shards"], 10**9)


def task_of_shard(record: dict, shard: int) -> int | None:
    """Which task of a recorded submission had `shard`."""
    shards = recorded_shards(record)
    for index in range(record["tasks"]):
        if shard in task_share(shards, index, record["tasks"]):
            return index
    return None


def log_file(work: str | Path, record: dict, task: int) -> Path:
    return layout.Work(work).root.resolve() / "slurm" / "logs" / f"{record['job_id']}_{task}.log"


def failed_shards(work: str | Path, source: str, lines: int = 20) -> list[dict]:
    """Shards of the latest submission whose task has left the queue while the shard is not done,
    each with the tail of its task's log."""
    if lines < 0:
        raise SlurmError(f"--lines must be >= 0, got {lines}")
    w = layout.Work(work)
    load_manifest(w)  # a work dir, or the error that says it is none
    records = [r for r in submissions(w, source) if r.get("job_id")]
    if not records:
        return []
    record = records[-1]
    states = task_states([record["job_id"]])
    out = []
    for shard in recorded_shards(record):
        if done.check(w, source, shard).state == done.DONE:
            continue
        task = task_of_shard(record, shard)
        if f"{record['job_id']}_{task}" in states:
            continue  # still pending or running
        log = log_file(w, record, task)
        tail = (storage.read_bytes(log).decode("utf-8", errors="replace").splitlines()[-lines:]
                if storage.exists(log) else [])
        out.append({"shard": shard, "job": f"{record['job_id']}_{task}", "log": str(log), "tail": tail})
    return out


def status_text(work: str | Path, manifest, statuses, strays) -> str:
    """`rewrite status`'s text: each source's shard states, with Slurm's view of its jobs beneath."""
    from ..workdir import status as status_lib

    return status_lib.render(manifest, statuses, strays, notes={st.source: describe(work, st.source) for st in statuses})


def describe(work: str | Path, source: str) -> list[str]:
    """Lines for `rewrite status`: the latest submission's tasks by state, and its unfinished shards
    by what their task is doing."""
    records = [r for r in submissions(work, source) if r.get("job_id")]
    if not records:
        return []
    w, record = layout.Work(work), records[-1]
    states = task_states([record["job_id"]])
    by_state: dict[str, list[int]] = {}
    for shard in recorded_shards(record):
        if done.check(w, source, shard).state == done.DONE:
            continue
        state = states.get(f"{record['job_id']}_{task_of_shard(record, shard)}", "ENDED")
        by_state.setdefault(state, []).append(shard)
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    ended = record["tasks"] - sum(counts.values())
    summary = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "none in the queue"
    lines = [f"         slurm job {record['job_id']}: {record['tasks']} tasks over shards {record['shards']}: "
             f"{summary}; ended {ended}"]
    for state, shards in sorted(by_state.items()):
        label = "ended unfinished (rewrite slurm failed)" if state == "ENDED" else state.lower()
        lines.append(f"         shards {label}: {format_shard_spec(shards)}")
    return lines
