"""What the faithfulness gate does: the demo captions rewritten on the packaged model, without and with
`--min-faithfulness`, per prompt template and meta set (what `rewrite demo`'s defaults were chosen by).

    python bench/faithfulness.py [--captions 240] [--bar 0.2[,0.3]] [--templates laclip,chat]
                                 [--source chatgpt[,coco]] [--sets-from REV]

Per template and set: (1) one attempt per caption, no gate: the faithfulness of every rewrite
(faithful.py), its mean, and the share below each bar (what the gate rejects on a first attempt); (2)
per bar, the same captions with the gate and the usual 3 attempts: the valid rate, the share failed as
unfaithful, the retries it cost and the mean faithfulness of what is kept; examples it caught (first
attempts below the bar), the lowest-scoring rewrites it let through, and the first rows (what `rewrite
demo` shows with those settings). --sets-from REV also runs (1) with the meta set as it was at git
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

from machine import cpu_model
from rewrite import engines
from rewrite.rewriting import faithful, validate
from rewrite.inputs import plan
from rewrite.run import runner
from rewrite.launch.demo import demo_captions
from rewrite.defaults import Schedule
from rewrite.run.config import RunConfig


def rewrite_all(captions: list[str], engine, **config) -> tuple[list[dict], dict]:
    """The captions' rows and the shard's stats, from a fresh work dir."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-faithful-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(captions) + "\n", encoding="utf-8")
        plan.plan([str(src)], Path(tmp) / "work", num_shards=1)
        cfg = RunConfig(**config)
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


def first_rows(captions: list[str], rows: list[dict], show: int = 8) -> list[dict]:
    """The first rows as the demo prints them: caption and rewrite, or the row's status and reason."""
    return [{"caption": c, "rewrite": r["rewrite"] if r["status"] == "ok" else f"({r['status']}: {r['reason']})"}
            for c, r in zip(captions[:show], rows)]


def spread(plain: list[tuple[float, str, str]], bar: float) -> dict:
    """Figures of ungated rewrites: faithfulness, recall, novelty, and the share the gate would reject."""
    return {"ok": len(plain), "faithfulness_mean": round(statistics.mean(s for s, _, _ in plain), 3),
            "share_below_bar": round(sum(s < bar for s, _, _ in plain) / len(plain), 3),
            "recall_mean": round(statistics.mean(faithful.recall(c, r) or 0 for _, c, r in plain), 3),
            "novelty_mean": round(statistics.mean(faithful.novelty(c, r) or 0 for _, c, r in plain), 3)}


def measure(captions: list[str], engine, source: str, template: str, bars: list[float]) -> list[dict]:
    """One result per bar: the ungated first attempts (run once) beside the run gated at that bar."""
    first, _ = rewrite_all(captions, engine, source=source, template=template, max_attempts=1)
    plain = scored(captions, first)
    results = []
    for bar in bars:
        gated_rows, stats = rewrite_all(captions, engine, source=source, template=template, min_faithfulness=bar)
        gated = scored(captions, gated_rows)
        judged = sum(r["status"] != "skipped" for r in gated_rows)
        results.append({
            "template": template, "source": source, "bar": bar, "captions": len(captions),
            "ungated": spread(plain, bar),
            "gated": {"ok": len(gated), "valid_rate": round(len(gated) / judged, 3),
                      "failed_unfaithful_share": round(sum(r["reason"] == validate.UNFAITHFUL for r in gated_rows) / judged, 3),
                      "requests_per_caption": round(stats["requests"] / judged, 3),
                      "rejected": stats.get("rejected", {}),
                      "faithfulness_mean": round(statistics.mean(s for s, _, _ in gated), 3)},
            "caught": [{"score": round(s, 3), "caption": c, "rewrite": r} for s, c, r in sorted(plain) if s < bar][:5],
            "let_through": [{"score": round(s, 3), "caption": c, "rewrite": r} for s, c, r in sorted(gated)[:5]],
            "first_ungated": first_rows(captions, first),
            "first_gated": first_rows(captions, gated_rows),
        })
    return results


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
             "gated: valid rate | failed as unfaithful | requests/caption | faithfulness kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        u, g = r["ungated"], r.get("gated")
        lines.append(f"| {r['template']} | {r['source']} | {r['bar']} | {u['faithfulness_mean']} | {u['recall_mean']} | "
                     f"{u['novelty_mean']} | {u['share_below_bar']} | "
                     + (f"{g['valid_rate']} | {g['failed_unfaithful_share']} | {g['requests_per_caption']} | "
                        f"{g['faithfulness_mean']} |" if g else "- | - | - | - |"))
    for r in results:
        for title, key in (("caught (first attempt, below the bar)", "caught"), ("let through (lowest kept)", "let_through")):
            if r.get(key):
                lines += ["", f"{r['template']} / {r['source']} / {r['bar']}: {title}", ""]
                lines += [f"- {e['score']}: {e['caption']} -> {e['rewrite']}" for e in r[key]]
        for title, key in (("first rows, no gate", "first_ungated"), ("first rows, gated", "first_gated")):
            if r.get(key):
                lines += ["", f"{r['template']} / {r['source']} / {r['bar']}: {title}", ""]
                lines += [f"- {e['caption']} -> {e['rewrite']}" for e in r[key]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=240)
    ap.add_argument("--bar", default="0.2", help="--min-faithfulness of the gated runs (comma-separated: one run each)")
    ap.add_argument("--source", default="chatgpt", help="meta sets (comma-separated)")
    ap.add_argument("--templates", default="laclip,chat")
    ap.add_argument("--sets-from", help="also the ungated run with the set as it was at this git revision")
    ap.add_argument("--out-json")
    args = ap.parse_args()
    captions = demo_captions().read_text(encoding="utf-8").splitlines()[: args.captions]
    bars = [float(b) for b in args.bar.split(",")]
    results = []
    with engines.opened("transformers", None) as engine, tempfile.TemporaryDirectory() as tmp:
        for source in args.source.split(","):
            if args.sets_from:
                path = old_set(args.sets_from, source, Path(tmp))
                rows, _ = rewrite_all(captions, engine, source=path, max_attempts=1)
                results.append({"template": "laclip", "source": f"{source} at {args.sets_from}", "bar": bars[0],
                                "ungated": spread(scored(captions, rows), bars[0])})
            for template in args.templates.split(","):
                for result in measure(captions, engine, source, template, bars):
                    results.append(result)
                    print(json.dumps({k: result[k] for k in ("template", "source", "bar", "ungated", "gated")}), flush=True)
    cpu = cpu_model()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out_json or HERE / "results" / f"{stamp}-faithfulness.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "results": results}, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(table(results, cpu), encoding="utf-8")
    print(table(results, cpu))


if __name__ == "__main__":
    main()
