"""What the faithfulness gate does: the demo captions rewritten on the packaged model, without and with
`--min-faithfulness`, per prompt template.

    python bench/faithfulness.py [--captions 240] [--bar 0.2] [--templates laclip,chat] [--sets-from REV]

Per template: (1) one attempt per caption, no gate: the faithfulness of every rewrite (faithful.py),
its mean, and the share below the bar (what the gate rejects on a first attempt); (2) the same captions
with the gate and the usual 3 attempts: the share still failed as unfaithful, the retries it cost and
the mean faithfulness of what is kept; examples it caught (first attempts below the bar) and the
lowest-scoring rewrites it let through. --sets-from REV also runs (1) with the meta set as it was at git
revision REV (to see what revised examples change). Results: bench/results/<time>-faithfulness.json/.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rewrite import engines, faithful, plan, runner, validate  # noqa: E402
from rewrite.demo import demo_captions  # noqa: E402
from rewrite.settings import Schedule  # noqa: E402


def rewrite_all(captions: list[str], engine, **config) -> tuple[list[dict], dict]:
    """The captions' rows and the shard's stats, from a fresh work dir."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-faithful-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(captions) + "\n", encoding="utf-8")
        plan.plan([str(src)], Path(tmp) / "work", num_shards=1)
        cfg = runner.RunConfig(**config)
        stats = runner.run(Path(tmp) / "work", cfg, [0], engine, progress=False, schedule=Schedule(streaming=False))[0]
        rows = pq.read_table(Path(tmp) / "work" / "rewrites" / cfg.source / "00000.parquet").to_pylist()
    return rows, stats


def scored(captions: list[str], rows: list[dict]) -> list[tuple[float, str, str]]:
    out = []
    for caption, row in zip(captions, rows):
        if row["status"] == "ok":
            score = faithful.faithfulness(caption, row["rewrite"])
            if score is not None:
                out.append((score, caption, row["rewrite"]))
    return out


def spread(plain: list[tuple[float, str, str]], bar: float) -> dict:
    """Figures of ungated rewrites: faithfulness, recall, novelty, and the share the gate would reject."""
    return {"ok": len(plain), "faithfulness_mean": round(statistics.mean(s for s, _, _ in plain), 3),
            "share_below_bar": round(sum(s < bar for s, _, _ in plain) / len(plain), 3),
            "recall_mean": round(statistics.mean(faithful.recall(c, r) or 0 for _, c, r in plain), 3),
            "novelty_mean": round(statistics.mean(faithful.novelty(c, r) or 0 for _, c, r in plain), 3)}


def measure(captions: list[str], engine, source: str, template: str, bar: float) -> dict:
    first, _ = rewrite_all(captions, engine, source=source, template=template, max_attempts=1)
    plain = scored(captions, first)
    gated_rows, stats = rewrite_all(captions, engine, source=source, template=template, min_faithfulness=bar)
    gated = scored(captions, gated_rows)
    judged = sum(r["status"] != "skipped" for r in gated_rows)
    return {
        "template": template, "source": source, "bar": bar, "captions": len(captions),
        "ungated": spread(plain, bar),
        "gated": {"ok": len(gated), "failed_unfaithful_share": round(sum(
                      r["reason"] == validate.UNFAITHFUL for r in gated_rows) / judged, 3),
                  "requests_per_caption": round(stats["requests"] / judged, 3),
                  "rejected": stats.get("rejected", {}),
                  "faithfulness_mean": round(statistics.mean(s for s, _, _ in gated), 3)},
        "caught": [{"score": round(s, 3), "caption": c, "rewrite": r} for s, c, r in sorted(plain) if s < bar][:5],
        "let_through": [{"score": round(s, 3), "caption": c, "rewrite": r} for s, c, r in sorted(gated)[:5]],
    }


def old_set(rev: str, source: str, folder: Path) -> str:
    """The shipped set `source` as it was at git revision `rev`, as a custom set file."""
    text = subprocess.run(["git", "show", f"{rev}:meta_pairs/{source}.jsonl"], cwd=HERE.parent, check=True,
                          capture_output=True, text=True).stdout
    path = folder / f"{source}_at_{rev[:7]}.jsonl"
    path.write_text(text, encoding="utf-8")
    return str(path)


def table(results: list[dict], cpu: str) -> str:
    lines = [f"CPU: {cpu}; packaged model (transformers engine); demo captions", "",
             "| template | set | bar | no gate: faithfulness | recall | novelty | share below bar | "
             "gated: failed as unfaithful | requests/caption | faithfulness kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        u, g = r["ungated"], r.get("gated")
        lines.append(f"| {r['template']} | {r['source']} | {r['bar']} | {u['faithfulness_mean']} | {u['recall_mean']} | "
                     f"{u['novelty_mean']} | {u['share_below_bar']} | "
                     + (f"{g['failed_unfaithful_share']} | {g['requests_per_caption']} | {g['faithfulness_mean']} |" if g else "- | - | - |"))
    for r in results:
        for title, key in (("caught (first attempt, below the bar)", "caught"), ("let through (lowest kept)", "let_through")):
            if r.get(key):
                lines += ["", f"{r['template']} / {r['source']}: {title}", ""]
                lines += [f"- {e['score']}: {e['caption']} -> {e['rewrite']}" for e in r[key]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=240)
    ap.add_argument("--bar", type=float, default=0.2, help="--min-faithfulness of the gated runs")
    ap.add_argument("--source", default="chatgpt")
    ap.add_argument("--templates", default="laclip,chat")
    ap.add_argument("--sets-from", help="also the ungated run with the set as it was at this git revision")
    ap.add_argument("--out-json")
    args = ap.parse_args()
    captions = demo_captions().read_text(encoding="utf-8").splitlines()[: args.captions]
    results = []
    with engines.opened("transformers", None) as engine, tempfile.TemporaryDirectory() as tmp:
        if args.sets_from:
            path = old_set(args.sets_from, args.source, Path(tmp))
            rows, _ = rewrite_all(captions, engine, source=path, max_attempts=1)
            results.append({"template": "laclip", "source": f"{args.source} at {args.sets_from}", "bar": args.bar,
                            "ungated": spread(scored(captions, rows), args.bar)})
        for template in args.templates.split(","):
            results.append(measure(captions, engine, args.source, template, args.bar))
            print(json.dumps({k: v for k, v in results[-1].items() if k not in ("caught", "let_through")}), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out_json or HERE / "results" / f"{stamp}-faithfulness.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "results": results}, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(table(results, cpu), encoding="utf-8")
    print(table(results, cpu))


if __name__ == "__main__":
    main()
