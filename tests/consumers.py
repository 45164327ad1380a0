"""Run the real CLIP trainers' data loaders on our exports, in the consumer venv.

open_clip_train 3.3.0 (with webdataset 0.2.86, torch and torchvision) lives in a separate venv made by
scripts/install-consumer-env.sh: its torchvision does not load beside the project's CPU torch. Tests
call the functions below; each runs this same file with the venv's python (``python consumers.py OP
PARAMS.json OUT.json``), where the loader is built and iterated exactly as open_clip_train/main.py does
it (``params.parse_args`` on real command-line flags, then ``get_data``), and the results come back as
JSON. The test side of this file imports only the standard library.

What is recorded inside the loader (by wrapping its tokenizer, filter and pass iterator, not changing them):
- ``texts``: the raw strings open_clip handed to its tokenizer (the tokenizer is wrapped) for the
  samples the loader yielded, in the order the batches came out (``read_ahead`` counts strings it
  tokenized beyond those: its pipeline reads ahead); ``decoded``: the yielded token rows decoded back
  (lower-cased, cleaned and cut to 77 tokens, as the model sees them);
- ``keys`` (webdataset only): the keys of the samples that passed open_clip's own caption/image filter,
  read-ahead included (before image decoding, so a sample dropped later by a decode error is listed);
- ``passes`` (webdataset only): how many times the training loader went over the shards to fill its
  epoch of ``num_samples`` samples: more than one means it repeated samples because fewer valid ones
  exist than it was told;
- ``warnings``: log records of level WARNING and up (open_clip logs, then skips, a sample it cannot
  decode) and Python warnings.
Recording goes through a file, so it also works with ``workers=1`` (the loader's worker process).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VENV_ENV = "REWRITE_CONSUMER_VENV"
# Environment that would make webdataset or torch believe they run in a distributed job.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "LOCAL_RANK", "WORKER",
             "NUM_WORKERS", "MASTER_ADDR", "MASTER_PORT")


class ConsumerError(RuntimeError):
    """The consumer's loader failed, or did not finish in time."""


def consumer_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or Path.home() / ".cache/rewrite/consumer-venv")


@functools.lru_cache(maxsize=None)
def consumer_python() -> Path | None:
    """The consumer venv's python if it imports open_clip_train.data, else None."""
    python = consumer_venv() / "bin" / "python"
    if not python.exists():
        return None
    try:
        proc = subprocess.run([str(python), "-c", "import open_clip_train.data"], capture_output=True,
                              timeout=300, env=_env(), cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if proc.returncode == 0 else None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(op: str, params: dict, cwd: str | os.PathLike | None, timeout: float) -> Any:
    python = consumer_python()
    if python is None:
        raise ConsumerError(f"no consumer venv at {consumer_venv()}: run scripts/install-consumer-env.sh")
    with tempfile.TemporaryDirectory(prefix="consumer-") as tmp:
        params_file, out_file = Path(tmp) / "params.json", Path(tmp) / "out.json"
        params_file.write_text(json.dumps(params), encoding="utf-8")
        cmd = [str(python), str(Path(__file__).resolve()), op, str(params_file), str(out_file)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                                  cwd=None if cwd is None else str(cwd))
        except subprocess.TimeoutExpired as e:
            stderr = (e.stderr or b"")[-2000:].decode("utf-8", "replace")
            raise ConsumerError(f"{op} did not finish in {timeout:g} s; stderr:\n{stderr}") from e
        if proc.returncode != 0 or not out_file.exists():
            raise ConsumerError(f"{op} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        result = json.loads(out_file.read_text(encoding="utf-8"))
    if isinstance(result, dict):
        result["stderr"] = proc.stderr
    return result


def _check_workers(workers: int) -> None:
    if workers not in (0, 1):
        raise ValueError("workers must be 0 or 1: with more, samples from different workers interleave")


def open_clip_wds(urls: str | list[str], num_samples: int | None = None, *, batch_size: int = 1,
                  workers: int = 0, seed: int = 0, resampled: bool = False,
                  upsampling_factors: str | None = None, cwd: str | os.PathLike | None = None,
                  timeout: float = 600) -> dict:
    """Iterate open_clip_train's webdataset training loader (``get_wds_dataset``, is_train=True, epoch 0,
    on the CPU) over ``urls`` to its end.

    ``urls`` is what ``--train-data`` takes (brace notation, ``::`` between sources) or a list of shard
    paths; ``num_samples`` is ``--train-num-samples`` (None: open_clip reads ``sizes.json`` or
    ``__len__`` beside the first shard). Training batches are full (a partial last batch is dropped and
    the epoch filled by repeating), so keep ``batch_size=1`` to see every sample once.

    ``workers`` is 0 or 1 (with one worker the order of samples is still known).

    Returns a dict: ``count`` (samples yielded), ``batches``, ``texts``, ``read_ahead``, ``decoded``,
    ``keys``, ``passes``, ``num_samples`` and ``num_batches`` (what open_clip computed), ``image_shapes``
    (distinct per-sample tensor shapes), ``warnings``, ``versions``, ``stderr`` (see the module's
    docstring). A shard set with no valid sample raises :class:`ConsumerError` (open_clip itself would
    loop forever).
    """
    _check_workers(workers)
    params = dict(urls=urls, num_samples=num_samples, batch_size=batch_size, workers=workers, seed=seed,
                  resampled=resampled, upsampling_factors=upsampling_factors)
    return _run("open_clip_wds", params, cwd, timeout)


def open_clip_csv(path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "title",
                  sep: str = "\t", *, batch_size: int = 1, workers: int = 0,
                  cwd: str | os.PathLike | None = None, timeout: float = 600) -> dict:
    """Iterate open_clip_train's CSV training loader (``get_csv_dataset``, is_train=True) over ``path``.

    Image paths in the file are opened as written, relative to ``cwd`` (default: this process's
    working directory). Training drops a partial last batch: keep ``batch_size=1`` to see every row.
    Returns the same fields as :func:`open_clip_wds` except ``keys`` and ``passes``.
    """
    _check_workers(workers)
    params = dict(path=str(path), img_key=img_key, caption_key=caption_key, sep=sep,
                  batch_size=batch_size, workers=workers)
    return _run("open_clip_csv", params, cwd, timeout)


def webdataset_fields(urls: str | list[str], *, cwd: str | os.PathLike | None = None,
                      timeout: float = 600) -> list[dict]:
    """Every sample as plain ``webdataset.WebDataset(urls)`` (0.2.86, default handler: errors raise)
    groups it, in tar order: ``{"key", "url", "members": sorted extensions, "txt": str | None,
    "json": dict | None, "json_error": str | None}``."""
    return _run("webdataset_fields", dict(urls=urls), cwd, timeout)


# ---------------------------------------------------------------------------------------------------
# Below: runs inside the consumer venv.

class _Recorder:
    """Appends JSON lines to a file: usable from the loader's worker processes too."""

    def __init__(self, path: str):
        self.path = path

    def add(self, ev: str, value: Any = None) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ev": ev, "v": value}) + "\n")

    def read(self, ev: str) -> list:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [r["v"] for r in map(json.loads, f) if r["ev"] == ev]


def _install_recording(rec: _Recorder):
    import logging
    import warnings

    class Handler(logging.Handler):
        def emit(self, record):
            rec.add("warning", f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Handler(logging.WARNING)
    logging.getLogger().addHandler(handler)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        rec.add("warning", f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")
    warnings.showwarning = showwarning


def _recording_tokenizer(tokenizer, rec: _Recorder):
    """open_clip's tokenizer, recording the raw strings it is given (str from webdataset, [str] from CSV)."""
    def tokenize(texts, *args, **kw):
        for t in [texts] if isinstance(texts, str) else texts:
            rec.add("text", t)
        return tokenizer(texts, *args, **kw)
    return tokenize


def _versions() -> dict:
    import importlib.metadata as md
    return {p: md.version(p) for p in ("open_clip_torch", "webdataset", "torch", "torchvision", "pandas", "pillow")}


def _iterate(op: str, params: dict, rec: _Recorder) -> dict:
    _check_workers(params["workers"])
    import open_clip
    from open_clip_train import data as oc_data
    from open_clip_train.params import parse_args

    flags = ["--train-data", params["urls"] if op == "open_clip_wds" else params["path"],
             "--batch-size", str(params["batch_size"]), "--workers", str(params["workers"])]
    if op == "open_clip_wds":
        urls = params["urls"]
        if not isinstance(urls, str):  # a list of shards: open_clip's command line takes "::" between sources
            urls = "::".join(urls)
        flags[1] = urls
        flags += ["--dataset-type", "webdataset", "--seed", str(params["seed"])]
        if params["num_samples"] is not None:
            flags += ["--train-num-samples", str(params["num_samples"])]
        if params["resampled"]:
            flags += ["--dataset-resampled"]
        if params["upsampling_factors"] is not None:
            flags += ["--train-data-upsampling-factors", params["upsampling_factors"]]
    else:
        flags += ["--dataset-type", "csv", "--csv-img-key", params["img_key"],
                  "--csv-caption-key", params["caption_key"], "--csv-separator", params["sep"]]
    args = parse_args(flags)
    # What open_clip_train.distributed.init_distributed_device sets for a single process.
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0

    tokenizer = open_clip.get_tokenizer(args.model)
    preprocess_train = open_clip.image_transform(224, is_train=True)
    preprocess_val = open_clip.image_transform(224, is_train=False)

    if op == "open_clip_wds":
        # Record the keys that pass open_clip's own filter (the pipeline looks the name up when built).
        real_filter = oc_data.filter_no_caption_or_no_image

        def recording_filter(sample):
            ok = real_filter(sample)
            if ok:
                rec.add("key", sample["__key__"])
            return ok
        oc_data.filter_no_caption_or_no_image = recording_filter

    info = oc_data.get_data(args, (preprocess_train, preprocess_val), epoch=0,
                            tokenizer=_recording_tokenizer(tokenizer, rec))["train"]
    loader = info.dataloader

    if op == "open_clip_wds":
        # Count the passes over the shards; stop a pass that finds nothing (the loader would repeat it forever).
        pipeline = loader.pipeline[0].dataset
        one_pass = pipeline.iterator1

        def counted_pass():
            rec.add("pass")
            n = 0
            for item in one_pass():
                n += 1
                yield item
            if n == 0:
                raise RuntimeError("a whole pass over the shards gave no batch: no valid sample "
                                   "(or fewer than batch_size); open_clip would loop forever")
        pipeline.iterator1 = counted_pass

    info.set_epoch(0)
    count = batches = 0
    decoded, shapes = [], set()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    for images, texts in loader:
        batches += 1
        count += len(images)
        assert len(images) == len(texts)
        shapes.update(tuple(im.shape) for im in images)
        for row in texts.tolist():
            end = row.index(eot) if eot in row else len(row)
            decoded.append(tokenizer.decode([t for t in row[:end] if t != sot]).strip())
    # The pipeline reads ahead (webdataset's batcher takes the next sample before it yields a batch, a
    # worker prefetches): the yielded samples are the first `count` ones tokenized, in order.
    seen = rec.read("text")
    result = dict(count=count, batches=batches, texts=seen[:count], read_ahead=len(seen) - count,
                  decoded=decoded,
                  num_samples=loader.num_samples, num_batches=loader.num_batches,
                  image_shapes=sorted(list(s) for s in shapes))
    if op == "open_clip_wds":
        result.update(keys=rec.read("key"), passes=len(rec.read("pass")))
    return result


def _webdataset_fields(params: dict) -> list[dict]:
    import webdataset as wds
    out = []
    for sample in wds.WebDataset(params["urls"]):
        members = sorted(k for k in sample if not k.startswith("__"))
        item = {"key": sample["__key__"], "url": sample.get("__url__"), "members": members,
                "txt": None, "json": None, "json_error": None}
        if "txt" in sample:
            item["txt"] = sample["txt"].decode("utf-8")
        if "json" in sample:
            try:
                item["json"] = json.loads(sample["json"])
            except ValueError as e:
                item["json_error"] = str(e)
        out.append(item)
    return out


def _main(argv: list[str]) -> None:
    op, params_file, out_file = argv
    params = json.loads(Path(params_file).read_text(encoding="utf-8"))
    rec = _Recorder(str(Path(out_file).with_suffix(".events.jsonl")))
    _install_recording(rec)
    if op in ("open_clip_wds", "open_clip_csv"):
        result: Any = _iterate(op, params, rec)
        result.update(warnings=rec.read("warning"), versions=_versions())
    elif op == "webdataset_fields":
        result = _webdataset_fields(params)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    Path(out_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    _main(sys.argv[1:])
