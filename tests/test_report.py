"""`rewrite report`: figures over a tiny hand-made work dir checked against values worked out by hand,
and over its exports (every format) against the same values, the files it writes, its errors, its bounded
memory, and one run on the real engine."""
from __future__ import annotations

import base64
import json
import math
import random
import re
import statistics
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_parquet

from rewrite.workdir import atomic, done, layout
from rewrite.workdir.manifest import Manifest
from rewrite.rewriting import clip_tokens, faithful, prompt
from rewrite.exports import export
from rewrite import meta, report
from rewrite.inputs import plan
from rewrite.run import runner
from rewrite.exports import ExportOptions
from rewrite.report import ReportError
from rewrite.run.config import RunConfig
from rewrite.run.shardwork import merge_stats, schema

PNG = b"\x89PNG\r\n\x1a\n"
CAPTIONS = ["a dog runs", "<b>& cats sleep", "a red car", "", "two birds sing", "green hills at dawn", "an old boat"]
TARGETS = ["one two three four", "one two", "one two three four five six"]  # 4, 2 and 6 words


def ok(text):
    return (text, layout.STATUS_OK, None)


def failed(reason):
    return (None, layout.STATUS_FAILED, reason)


SKIP = (None, layout.STATUS_SKIPPED, "empty_caption")


def record_settings(w: layout.Work, manifest: Manifest, config: RunConfig) -> None:
    """The source's settings.json, as a run records it (its fingerprint)."""
    meta_set = meta.load(config.meta_file or config.source)
    fingerprint = config.fingerprint(meta_set, prompt.load_template(config.template), "transformers", "test-model")
    atomic.write_json(w.settings_file(config.source), {**fingerprint, "plan_id": manifest.plan_id()})


def commit(w: layout.Work, manifest: Manifest, config: RunConfig, shard: int, results: list[list[tuple]],
           requests: int = 0, rejected: dict | None = None, failed_reasons: dict | None = None, finish: bool = True,
           tokens: tuple[int, int, int] = (0, 0, 0)):
    """A shard's sidecar (`results`: per row, (rewrite, status, reason) per index) and, with `finish`, its
    stats marking it done, as the runner writes them (`tokens`: prompt, cached and generated); without,
    the shard is left partial."""
    n = config.num_rewrites
    keys = pa.concat_tables(plan.iter_shard(manifest, shard, 100)).column(layout.KEY).to_pylist()
    assert len(keys) == len(results)
    columns = {layout.KEY: keys}
    for i in range(n):
        for j, column in enumerate((layout.rewrite_column(i, n), layout.suffixed(layout.STATUS, i, n),
                                    layout.suffixed(layout.REASON, i, n))):
            columns[column] = [row[i][j] for row in results]
    path = w.rewrite_file(config.source, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema(n)), path)
    if not finish:
        return
    statuses = [status for row in results for _, status, _ in row]
    chunk = {"rows": len(keys), "unique_captions": len(keys), "requests": requests, "ok": statuses.count("ok"),
             "failed": statuses.count("failed"), "skipped": statuses.count("skipped"), "prompt_tokens": tokens[0],
             "cached_prompt_tokens": tokens[1], "generated_tokens": tokens[2], "captions_cut": 0, "seconds": 1.0,
             "rejected": rejected or {}, "failed_reasons": failed_reasons or {}}
    stats = merge_stats([chunk])
    stats.update(shard=shard, source=config.source, engine={"engine": "transformers"}, duplicate_keys=0,
                 settings={**asdict(config), "sampling": config.sampling.to_dict()})
    done.mark_done(w, config.source, shard, stats, {"name": path.name, "bytes": path.stat().st_size, "rows": len(keys),
                                                    "sha256": done.sha256(path)})


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """7 captions (with keys and images, so that every export format can write them) in shards of 3:
    [0-2] [3-5] [6]. Set `mine` (a custom set, one rewrite a row): shards 0 and 1 done, 2 partial. Set
    `chatgpt` (two rewrites a row): shards 0 and 1 done, 2 missing."""
    captions = write_parquet(tmp_path / "input" / "captions.parquet", CAPTIONS)
    w = layout.Work(tmp_path / "work")
    manifest = plan.plan([str(captions)], w.root, rows_per_shard=3)
    mine_file = tmp_path / "mine.jsonl"
    mine_file.write_text("".join(json.dumps({"source": f"source {i}", "target": t}) + "\n"
                                 for i, t in enumerate(TARGETS)), encoding="utf-8")

    mine = RunConfig(source=str(mine_file))
    record_settings(w, manifest, mine)
    commit(w, manifest, mine, 0, [[ok("a dog")], [ok("<b>& cats sleep on a mat")], [ok("a blue bus")]],
           requests=4, rejected={"echo": 1})
    commit(w, manifest, mine, 1, [[SKIP], [failed("echo")], [ok("green hills under the morning sun")]],
           requests=4, rejected={"echo": 2, "empty": 1}, failed_reasons={"echo": 1})
    commit(w, manifest, mine, 2, [[ok("an old ship")]], finish=False)

    chatgpt = RunConfig(source="chatgpt", num_rewrites=2)
    record_settings(w, manifest, chatgpt)
    commit(w, manifest, chatgpt, 0, [[ok("a dog"), ok("a big dog runs")], [ok("cats sleeping"), failed("echo")],
                                     [ok("a blue bus"), ok("a small red car")]],
           requests=8, rejected={"echo": 3}, failed_reasons={"echo": 1})
    commit(w, manifest, chatgpt, 1, [[SKIP, SKIP], [ok("birds singing"), ok("two birds sing loudly")],
                                     [ok("green hills"), ok("hills at dawn")]],
           requests=5, rejected={"over_77_clip_tokens": 1})
    return w.root


def test_figures_match_hand_computed_values(work):
    summary = report.collect(work, progress=False)
    assert list(summary["sets"]) == ["chatgpt", "mine"]
    assert (summary["source"], summary["format"], summary["note"]) == ("work", None, None)
    mine = summary["sets"]["mine"]
    assert mine["shards"] == {"done": 2, "partial": 1, "missing": 0, "damaged": 0}
    assert (mine["rows"], mine["ok"], mine["failed"], mine["skipped"]) == (6, 4, 1, 1)
    assert mine["valid_rate"] == pytest.approx(4 / 5)
    assert mine["rejected"] == {"echo": 3, "empty": 1}  # attempts, from the stats
    assert mine["failed_reasons"] == {"echo": 1}  # final rows
    # 4 rejected attempts, 1 of them a failed rewrite's last: 3 retries; 8 requests = 5 first attempts + 3.
    assert (mine["requests"], mine["retries"], mine["first_attempts"]) == (8, 3, 5)
    words = mine["length"]["words"]
    assert words["targets"]["mean"] == 4 and words["targets"]["median"] == 4
    assert words["targets"]["p90"] == pytest.approx(5.6)  # [2, 4, 6]: 4 + 0.8 * (6 - 4)
    check_mine_rewrites(mine)
    assert mine["examples"]["worst"][0]["shard"] == 0
    assert mine["meta_set"]["file"] == str(work.parent / "mine.jsonl") and mine["meta_set"]["note"] is None


def check_mine_rewrites(mine: dict) -> None:
    """The figures of set `mine`'s four ok rewrites, worked out by hand: what a work dir and its exports give."""
    # Rewrites of 2, 6, 3, 6 words; their captions 3, 3, 3, 4 words. p90 of sorted [2, 3, 6, 6]: position
    # 0.9 * 3 = 2.7, between 6 and 6.
    words = mine["length"]["words"]
    assert (words["rewrite"]["mean"], words["rewrite"]["median"], words["rewrite"]["p90"]) == (4.25, 4.5, 6)
    assert words["original"]["mean"] == 3.25 and words["original"]["median"] == 3
    assert words["original"]["p90"] == pytest.approx(3.7)  # [3, 3, 3, 4]: 3 + 0.7 * (4 - 3)
    assert clip_tokens.count("a dog") == 4 and clip_tokens.count("a dog runs") == 5  # words + start and end
    pairs = [("a dog runs", "a dog"), ("<b>& cats sleep", "<b>& cats sleep on a mat"), ("a red car", "a blue bus"),
             ("green hills at dawn", "green hills under the morning sun")]
    tokens = mine["length"]["clip_tokens"]
    assert tokens["rewrite"]["mean"] == pytest.approx(statistics.mean(clip_tokens.count(r) for _, r in pairs))
    assert tokens["original"]["mean"] == pytest.approx(statistics.mean(clip_tokens.count(c) for c, _ in pairs))

    # Content words {dog, run} -> {dog}: recall 1/2, novelty 0, F1 2/3. {cat, sleep} -> {cat, sleep, mat}:
    # recall 1, novelty 1/3, F1 0.8. {red, car} -> {blue, bus}: 0, 1, 0. {green, hill, dawn} ->
    # {green, hill, morn, sun}: recall 2/3, novelty 1/2, F1 4/7.
    f = mine["faithfulness"]
    assert f["n"] == 4 and f["unscored"] == 0
    assert f["mean"] == pytest.approx((2 / 3 + 0.8 + 0 + 4 / 7) / 4)
    assert f["median"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert f["p90"] == pytest.approx(2 / 3 + 0.7 * (0.8 - 2 / 3))
    assert f["below"] == {"0.2": 0.25, "0.3": 0.25, "0.5": 0.25}
    assert sum(f["histogram"]) == 4 and f["histogram"][0] == 1 and f["histogram"][16] == 1  # 0.0 and 0.8
    assert mine["recall"]["mean"] == pytest.approx((0.5 + 1 + 0 + 2 / 3) / 4)
    assert mine["novelty"]["mean"] == pytest.approx((0 + 1 / 3 + 1 + 0.5) / 4)
    # Word overlap 2*matches/total: 2*2/5, 2*3/9, 2*1/6, 2*2/10.
    assert mine["word_overlap"]["mean"] == pytest.approx((0.8 + 2 / 3 + 1 / 3 + 0.4) / 4)

    # 17 words, 15 distinct ("a" three times); 13 bigrams, all distinct.
    assert mine["diversity"] == {"distinct_1": pytest.approx(15 / 17), "distinct_2": 1.0, "unigrams": 17, "bigrams": 13}

    best, worst = mine["examples"]["best"], mine["examples"]["worst"]
    assert [e["faithfulness"] for e in best] == pytest.approx([0.8, 2 / 3, 4 / 7, 0])
    assert best[0]["caption"] == "<b>& cats sleep" and best[0]["rewrite"] == "<b>& cats sleep on a mat"
    assert (worst[0]["rewrite"], worst[0]["faithfulness"]) == ("a blue bus", 0.0)


def test_several_rewrites_a_row_and_agreement_across_sets(work):
    summary = report.collect(work, progress=False)
    chatgpt = summary["sets"]["chatgpt"]
    assert chatgpt["shards"] == {"done": 2, "partial": 0, "missing": 1, "damaged": 0}
    assert (chatgpt["rows"], chatgpt["rewrites_per_row"]) == (6, 2)
    assert (chatgpt["ok"], chatgpt["failed"], chatgpt["skipped"]) == (9, 1, 2)
    assert chatgpt["valid_rate"] == pytest.approx(0.9)
    assert (chatgpt["requests"], chatgpt["retries"], chatgpt["first_attempts"]) == (13, 3, 10)
    assert chatgpt["rejected"] == {"echo": 3, "over_77_clip_tokens": 1}
    # 9 ok rewrites of 2+4, 2, 3+4, 2+4, 2+3 words; their captions 3 words each, but 4 for the last two.
    assert chatgpt["length"]["words"]["rewrite"]["mean"] == pytest.approx(26 / 9)
    assert chatgpt["length"]["words"]["original"]["mean"] == pytest.approx(29 / 9)
    assert chatgpt["length"]["words"]["targets"]["n"] > 0  # the shipped set the fingerprint names
    # Rows with an ok rewrite in both sets: 0, 1, 2 and 5; "a dog" (row 0) and "a blue bus" (row 2) in both.
    assert summary["across_sets"] == {"sets": ["chatgpt", "mine"], "rows_compared": 4, "rows_identical": 2,
                                      "identical_share": 0.5, "shards": 2, "of_shards": 2, "margin_95": 0.0}


def test_sets_chosen_by_name_or_file(work):
    summary = report.collect(work, [str(work.parent / "mine.jsonl")], progress=False)
    assert list(summary["sets"]) == ["mine"]
    assert summary["across_sets"]["identical_share"] is None
    assert list(report.collect(work, ["chatgpt"], progress=False)["sets"]) == ["chatgpt"]


def test_a_set_file_gone_or_changed_leaves_its_targets_out(work):
    mine_file = work.parent / "mine.jsonl"
    mine_file.write_text(mine_file.read_text() + json.dumps({"source": "x", "target": "y"}) + "\n")
    figures = report.collect(work, ["mine"], progress=False)["sets"]["mine"]
    assert figures["length"]["words"]["targets"] is None
    assert str(mine_file) in figures["meta_set"]["note"] and "changed" in figures["meta_set"]["note"]
    mine_file.unlink()
    assert report.collect(work, ["mine"], progress=False)["sets"]["mine"]["length"]["words"]["targets"] is None


def test_files_written(work, tmp_path, capsys):
    result = report.report(work, tmp_path / "out" / "report", progress=True)
    assert "report" in capsys.readouterr().err  # the progress bar, on stderr
    paths = result["paths"]
    assert set(paths) == {"json", "html", "reject_reasons", "faithfulness_mine", "faithfulness_chatgpt",
                          "length_words_mine", "length_words_chatgpt"}
    for name, path in paths.items():
        if name not in ("json", "html"):
            assert path.suffix == ".png" and path.read_bytes().startswith(PNG)
    written = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(result["summary"]))
    assert written["work"] == str(work.resolve()) and written["version"] == report.__version__
    assert written["generated_at"] and written["sets"]["mine"]["faithfulness"]["mean"] == pytest.approx(0.5095238)

    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "&lt;b&gt;&amp; cats sleep on a mat" in page and "<b>&" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page


def test_out_folder_inside_the_work_dir_is_refused(work):
    for inside in (work / "rewrites" / "mine" / "report", work / "report", work):
        with pytest.raises(ReportError, match="(lies inside|is) the work dir .*a report goes to a folder of its own"):
            report.report(work, inside, progress=False)
    assert not (work / "rewrites" / "mine" / "report").exists() and not (work / "report").exists()


def test_a_report_folder_is_its_own(work, tmp_path):
    """A folder of someone's files is refused, even with --overwrite; an earlier report is replaced only
    with --overwrite, and then only the files it wrote go."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report.html").write_text("my own page")
    for overwrite in (False, True):
        with pytest.raises(ReportError, match="holds files a report did not write \\(report.html\\)"):
            report.report(work, theirs, progress=False, overwrite=overwrite)
    assert (theirs / "report.html").read_text() == "my own page"

    out = tmp_path / "report"
    first = report.report(work, out, progress=False)["paths"]
    with pytest.raises(ReportError, match="holds an earlier report: pass --overwrite"):
        report.report(work, out, progress=False)
    stale = out / "faithfulness_gone.png"  # a plot of a set the next report does not have
    stale.write_bytes(b"x")
    with pytest.raises(ReportError, match="faithfulness_gone.png"):  # not in the record: someone else's
        report.report(work, out, progress=False, overwrite=True)
    stale.unlink()
    record = json.loads((out / report.MARKER).read_text())
    record["files"].append(stale.name)
    (out / report.MARKER).write_text(json.dumps(record))
    stale.write_bytes(b"x")
    again = report.report(work, out, progress=False, overwrite=True)["paths"]
    assert sorted(p.name for p in again.values()) == sorted(p.name for p in first.values())
    assert not stale.exists() and all(p.is_file() for p in again.values())


def test_clear_errors(work, tmp_path, text_file):
    with pytest.raises(ReportError, match="has no shard plan"):
        report.collect(tmp_path / "empty", progress=False)
    with pytest.raises(ReportError, match="has no rewrites of bard .*sets run there: chatgpt, mine"):
        report.collect(work, ["bard"], progress=False)
    fresh = layout.Work(tmp_path / "fresh")
    manifest = plan.plan([str(text_file)], fresh.root, num_shards=2)
    with pytest.raises(ReportError, match="has no rewrites yet"):
        report.collect(fresh.root, progress=False)
    record_settings(fresh, manifest, RunConfig(source="human"))
    with pytest.raises(ReportError, match="no shard of human is done yet"):
        report.collect(fresh.root, progress=False)


@pytest.mark.parametrize("fmt", ["hf", "csv", "laclip", "wds"])
def test_an_export_gives_the_figures_of_its_rows(work, tmp_path, fmt):
    """The fixture exported (shard 2 without rewrites): the same rewrites give the same figures, the work
    dir's own figures are null, and a rewrite the export lacks counts as failed."""
    folder = tmp_path / fmt
    export.export(work, folder, fmt=fmt, allow_missing=True)
    summary = report.collect_export(folder, progress=False)
    assert (summary["source"], summary["format"]) == ("export", fmt)
    assert "no shard, request, retry or reject figures" in summary["note"]
    from_work = report.collect(work, progress=False)
    agreement = ("sets", "rows_compared", "rows_identical", "identical_share")  # the export's shards are its parts
    assert {k: summary["across_sets"][k] for k in agreement} == {k: from_work["across_sets"][k] for k in agreement}
    mine, chatgpt = summary["sets"]["mine"], summary["sets"]["chatgpt"]
    check_mine_rewrites(mine)
    # The CSV-shaped formats leave out the row whose caption is empty (it would read as missing).
    rows, skipped = (7, 1) if fmt in ("hf", "wds") else (6, 0)
    # mine: 4 ok; 1 failed in shard 1 and row 6 of shard 2, exported without rewrites.
    assert (mine["rows"], mine["ok"], mine["failed"], mine["skipped"]) == (rows, 4, 2, skipped)
    assert mine["valid_rate"] == pytest.approx(4 / 6)
    assert (chatgpt["rows"], chatgpt["ok"], chatgpt["failed"], chatgpt["skipped"]) == (rows, 9, 1 + 2, 2 * skipped)
    for name, figures in summary["sets"].items():
        same = from_work["sets"][name]
        for key in ("faithfulness", "recall", "novelty", "word_overlap", "diversity"):
            assert figures[key] == same[key]
        assert figures["length"]["clip_tokens"] == same["length"]["clip_tokens"]
        assert {k: figures["length"]["words"][k] for k in ("rewrite", "original")} == \
            {k: same["length"]["words"][k] for k in ("rewrite", "original")}
        examples = {which: [(e["caption"], e["rewrite"], e["faithfulness"]) for e in figures["examples"][which]]
                    for which in ("best", "worst")}
        assert examples == {which: [(e["caption"], e["rewrite"], e["faithfulness"]) for e in same["examples"][which]]
                            for which in ("best", "worst")}
        assert all(figures[key] is None for key in report.RUN_ONLY)
        assert figures["rejected"] == figures["failed_reasons"] == {}
        assert figures["length"]["words"]["targets"] is None and figures["meta_set"]["digest"] is None
    worst = mine["examples"]["worst"][0]
    assert (worst["shard"], worst["key"]) == ((0, "000000002") if fmt == "hf" else (None, "000000002") if fmt == "wds"
                                              else (None, "2.png"))
    assert list(report.collect_export(folder, ["mine"], progress=False)["sets"]) == ["mine"]


def test_a_csv_with_another_separator(work, tmp_path):
    export.export(work, tmp_path / "csv", fmt="csv", allow_missing=True, options=ExportOptions(separator=";"))
    assert (tmp_path / "csv" / "train.csv").read_text().startswith("image;title;caption_chatgpt_0;")
    check_mine_rewrites(report.collect_export(tmp_path / "csv", ["mine"], progress=False)["sets"]["mine"])


@pytest.mark.parametrize("fmt", ["hf", "csv"])
def test_the_report_of_an_export_says_it_is_one(work, tmp_path, fmt):
    folder = tmp_path / fmt
    export.export(work, folder, fmt=fmt, allow_missing=True)
    result = report.report(folder, tmp_path / "report", progress=False)
    paths = result["paths"]
    assert set(paths) == {"json", "html", "faithfulness_mine", "faithfulness_chatgpt", "length_words_mine",
                          "length_words_chatgpt"}  # no reject reasons: an export has none
    written = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert written["work"] == str(folder.resolve()) and written["source"] == "export"
    assert written["sets"]["mine"]["faithfulness"]["mean"] == pytest.approx(0.5095238)
    page = paths["html"].read_text(encoding="utf-8")
    assert f"Export {folder.resolve()} ({fmt} format)" in page
    assert "From an export: no shard, request, retry or reject figures" in page and "counts as failed" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    for inside in (folder / "data" / "report", folder / "report"):  # a report there would stop the next export
        with pytest.raises(ReportError, match="lies inside the export .*a report goes to a folder of its own"):
            report.report(folder, inside, progress=False)
    assert export.export(work, folder, fmt=fmt, allow_missing=True)["published"]


def test_a_folder_that_is_no_export_is_refused(work, tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "train.tsv").write_text("a\tb\n")
    for folder in (stray, tmp_path / "nowhere"):
        with pytest.raises(ReportError, match="neither a work dir .* nor an export"):
            report.report(folder, tmp_path / "report", progress=False)
    with pytest.raises(ReportError, match="is a work dir, not an export"):
        report.collect_export(work, progress=False)

    folder = tmp_path / "hf"
    export.export(work, folder, allow_missing=True)
    with pytest.raises(ReportError, match="has no rewrites of bard .*sets exported there: chatgpt, mine"):
        report.collect_export(folder, ["bard"], progress=False)
    marker = json.loads((folder / ".rewrite-export.json").read_text())
    (folder / "data" / "other.bin").write_bytes(b"x")
    (folder / ".rewrite-export.json").write_text(json.dumps({**marker, "files": ["data/other.bin"],
                                                             "sizes": {"data/other.bin": 1}}))
    with pytest.raises(ReportError, match="no format the report reads .*reads hf, csv, laclip, wds exports"):
        report.collect_export(folder, progress=False)
    (folder / ".rewrite-export.json").write_text(json.dumps({**marker, "published": None, "publishing": True}))
    with pytest.raises(ReportError, match="holds no finished export"):
        report.collect_export(folder, progress=False)
    (folder / ".rewrite-export.json").write_text(json.dumps(marker))
    (folder / "README.md").write_text("edited")
    with pytest.raises(ReportError, match="README.md is missing or changed since it was exported"):
        report.collect_export(folder, progress=False)


def test_memory_stays_bounded(monkeypatch):
    """Scores keep RESERVOIR of their values (the mean stays exact); distinct counts stay exact up to
    SKETCH n-grams and are estimated beyond it."""
    monkeypatch.setattr(report.tallies, "RESERVOIR", 50)
    scores = report.Scores()
    for i in range(1000):
        scores.add(i / 1000)
    assert len(scores.sample) == 50 and scores.summary()["mean"] == pytest.approx(0.4995)
    assert 0.2 < scores.summary()["median"] < 0.8

    monkeypatch.setattr(report.tallies, "SKETCH", 256)
    small, large = report.Distinct(1), report.Distinct(1)
    small.add([[f"w{i}" for i in range(200)] * 2])
    assert small.ratio() == 0.5
    large.add([[f"w{i}" for i in range(5000)] * 2])
    assert len(large.heap) == 256 and large.ratio() == pytest.approx(0.5, rel=0.25)


@pytest.mark.slow
def test_report_on_a_real_run(engine, tmp_path):
    """Four captions rewritten by the real engine: the report agrees with the sidecar file read here."""
    text = tmp_path / "captions.txt"
    text.write_text("a dog runs on the beach\nred apples in a basket\nan old bridge over a river\nkids flying kites\n")
    work = tmp_path / "work"
    plan.plan([str(text)], work, num_shards=1)
    runner.run(work, RunConfig(source="chatgpt", max_attempts=2), [0], engine, progress=False)

    summary = report.report(work, tmp_path / "report", progress=False)["summary"]
    sidecar = pq.read_table(layout.Work(work).rewrite_file("chatgpt", 0)).to_pylist()
    stats = json.loads(layout.Work(work).stats_file("chatgpt", 0).read_text())
    captions = text.read_text().splitlines()
    pairs = [(c, r["rewrite"]) for c, r in zip(captions, sidecar) if r["status"] == "ok"]
    figures = summary["sets"]["chatgpt"]
    assert figures["ok"] == len(pairs) and figures["ok"] + figures["failed"] == 4
    assert figures["retries"] == figures["requests"] - 4  # one first attempt per caption
    assert figures["rejected"] == stats["rejected"]
    scores = [s for s in (faithful.faithfulness(c, r) for c, r in pairs) if s is not None]
    if scores:
        assert figures["faithfulness"]["mean"] == pytest.approx(statistics.mean(scores))
    words = statistics.mean(len(r.split()) for _, r in pairs)
    assert figures["length"]["words"]["rewrite"]["mean"] == pytest.approx(words)


def test_the_report_command(work, tmp_path):
    from conftest import run_cli

    out = tmp_path / "made"
    said = run_cli("report", "--work", work, "--out", out, "--source", "mine", "--no-progress").stdout
    assert said.splitlines()[0].startswith("mine: valid 80% of 6/7 rows, faithfulness 0.51")
    assert f"report: {(out / 'report.html').resolve()}" in said
    assert json.loads((out / "report.json").read_text())["sets"]["mine"]["valid_rate"] == 0.8
    exported = tmp_path / "exported"
    run_cli("export", "--work", work, "--out", exported, "--allow-missing")
    from_export = run_cli("report", "--export", exported, "--out", tmp_path / "of-export", "--source", "mine").stdout
    assert from_export.splitlines()[0].startswith("mine: valid 67% of 7/7 rows, faithfulness 0.51")  # a null counts as failed
    bad = run_cli("report", "--work", work, "--out", tmp_path / "none", "--source", "nothing", check=False)
    assert bad.returncode == 2 and "nothing" in bad.stderr and "Traceback" not in bad.stderr


def test_embedding_similarity_with_a_local_model(work, tmp_path):
    """With a model on disk (here the packaged LM's weights, mean-pooled: any local encoder works the same
    way), the report adds each rewrite's cosine similarity to its caption."""
    from rewrite.engines import model
    from rewrite.rewriting.embedding import Embedder, EmbeddingError

    embedder = Embedder(model.resolve(None))
    same, other = embedder.similarity([("a red bike on a wall", "a red bike on a wall"),
                                       ("a red bike on a wall", "stock market numbers fall sharply")])
    assert same == pytest.approx(1.0, abs=1e-4) and other < same
    made = report.report(work, tmp_path / "r", ["mine"], progress=False, embedding_model=model.resolve(None))
    figures = made["summary"]["sets"]["mine"]["embedding_similarity"]
    assert figures["n"] == made["summary"]["sets"]["mine"]["ok"] and 0 < figures["mean"] <= 1
    assert made["summary"]["embedding_model"] == str(model.resolve(None))
    assert "embedding_similarity" not in report.collect(work, ["mine"], progress=False)["sets"]["mine"]
    with pytest.raises(EmbeddingError, match="not a local model folder"):
        Embedder(tmp_path / "nowhere")


# ---------------------------------------------------------------- counts from stats, per-row figures from a sample

COLOURS, THINGS, PLACES = ("red", "blue", "green", "old", "small"), ("dog", "boat", "house"), ("beach", "hill", "lake", "field")
ADDED = ("at dawn", "in the rain", "with people around")
COUNTS = ("shards", "shards_left_out", "rows", "ok", "failed", "skipped", "valid_rate", "requests", "first_attempts",
          "retries", "rejected", "failed_reasons", "tokens")


def caption_of(row: int) -> str:
    return f"a {COLOURS[row % 5]} {THINGS[row % 3]} by the {PLACES[row % 4]}"


def rewritten(caption: str, shard: int) -> str:
    """A rewrite whose faithfulness differs from shard to shard (it keeps more or fewer of the words)."""
    return " ".join(caption.split()[:2 + shard % 4] + [ADDED[shard % 3]])


@pytest.fixture
def ten_shards(tmp_path: Path) -> Path:
    """20 captions in 10 shards of 2, both sets done in every shard: chatgpt and bard (the same rewrite on
    even rows, another on odd ones); row 3 of every 7 failed; each shard's stats its own requests,
    rejects and tokens."""
    captions = [caption_of(i) for i in range(20)]
    path = write_parquet(tmp_path / "input" / "captions.parquet", captions)
    w = layout.Work(tmp_path / "work")
    manifest = plan.plan([str(path)], w.root, rows_per_shard=2)
    for source in ("chatgpt", "bard"):
        config = RunConfig(source=source)
        record_settings(w, manifest, config)
        for shard in range(10):
            results = []
            for i in (2 * shard, 2 * shard + 1):
                text = rewritten(captions[i], shard) if source == "chatgpt" or i % 2 == 0 else "a picture of " + captions[i]
                results.append([failed("echo") if i % 7 == 3 else ok(text)])
            failures = sum(row[0][1] == "failed" for row in results)
            commit(w, manifest, config, shard, results, requests=2 + shard, rejected={"echo": failures + shard % 2},
                   failed_reasons={"echo": failures} if failures else None, tokens=(10 * shard, shard, 3 * shard))
    return w.root


def test_counts_come_whole_from_the_stats_at_any_sample(ten_shards, monkeypatch):
    """The counts are every done shard's stats added up, the same with and without a sample, and taking
    them reads no row: only the sampled shards' captions are read."""
    read = []
    captions = report.from_work._captions
    monkeypatch.setattr(report.from_work, "_captions", lambda manifest, shard: read.append(shard) or captions(manifest, shard))
    everything = report.collect(ten_shards, progress=False, sample_rows=0)
    assert sorted(read) == list(range(10))
    read.clear()
    sampled = report.collect(ten_shards, progress=False, sample_rows=3)
    assert len(read) == 2  # 2 rows a shard: 2 shards give 3 or more rows
    for name in ("chatgpt", "bard"):
        assert {k: sampled["sets"][name][k] for k in COUNTS} == {k: everything["sets"][name][k] for k in COUNTS}
    stats = [json.loads(layout.Work(ten_shards).stats_file("chatgpt", shard).read_text()) for shard in range(10)]
    chatgpt = sampled["sets"]["chatgpt"]
    assert (chatgpt["rows"], chatgpt["ok"], chatgpt["failed"], chatgpt["skipped"]) == (20, 17, 3, 0)
    assert chatgpt["requests"] == sum(s["requests"] for s in stats) == 65
    assert chatgpt["rejected"] == {"echo": 3 + 5} and chatgpt["failed_reasons"] == {"echo": 3}
    assert chatgpt["retries"] == 5 and chatgpt["first_attempts"] == 60
    assert chatgpt["tokens"] == {"prompt": 450, "cached_prompt": 45, "generated": 135}
    assert chatgpt["shards"]["done"] == 10


def chosen_shards(summary_seed: int, sample_rows: int, rows_per_shard: int = 2, shards: int = 10) -> list[int]:
    """The shards a sample of `sample_rows` reads with this seed, worked out here: the seeded order's first
    shards until that many rows."""
    order = random.Random(summary_seed).sample(range(shards), shards)
    return sorted(order[:-(-sample_rows // rows_per_shard)])


def test_per_row_figures_come_from_the_rows_and_shards_reported(ten_shards):
    summary = report.collect(ten_shards, progress=False, sample_rows=5, seed=3)
    assert summary["sampling"] == {"sample_rows": 5, "seed": 3}
    chatgpt = summary["sets"]["chatgpt"]
    sample = chatgpt["sample"]
    assert (sample["rows"], sample["shards"], sample["of_rows"], sample["of_shards"], sample["exact"]) == (6, 3, 20, 10, False)
    shards = chosen_shards(3, 5)
    rows = [2 * s + r for s in shards for r in (0, 1)]
    pairs = [(caption_of(i), rewritten(caption_of(i), i // 2)) for i in rows if i % 7 != 3]
    scores = [faithful.faithfulness(c, r) for c, r in pairs]
    assert chatgpt["faithfulness"]["n"] == len(pairs) and chatgpt["faithfulness"]["mean"] == pytest.approx(statistics.mean(scores))
    assert chatgpt["length"]["words"]["rewrite"]["mean"] == pytest.approx(statistics.mean(len(r.split()) for _, r in pairs))
    assert {e["shard"] for which in ("best", "worst") for e in chatgpt["examples"][which]} <= set(shards)
    assert summary["across_sets"]["shards"] == 3 and summary["across_sets"]["of_shards"] == 10


def test_the_same_seed_gives_the_same_report_another_may_differ(ten_shards):
    def figures(seed):
        summary = report.collect(ten_shards, progress=False, sample_rows=4, seed=seed)
        return {k: v for k, v in summary.items() if k not in ("generated_at", "sampling")}

    assert figures(0) == figures(0)
    means = {figures(seed)["sets"]["chatgpt"]["faithfulness"]["mean"] for seed in range(6)}
    assert len(means) > 1
    assert len({tuple(chosen_shards(seed, 4)) for seed in range(6)}) > 1


def test_a_sample_gives_each_figures_margin_of_error(ten_shards):
    """Exact (0) when every shard is read, whether asked (0) or because there are no more rows; the ratio
    estimator's, with the finite-population correction, over a sample of shards; none from one shard."""
    for sample_rows in (0, 20, 10_000):
        summary = report.collect(ten_shards, progress=False, sample_rows=sample_rows)
        sample = summary["sets"]["chatgpt"]["sample"]
        assert sample["exact"] and (sample["rows"], sample["shards"]) == (20, 10)
        assert sample["margin_95"]["faithfulness.mean"] == 0.0 and set(sample["margin_95"].values()) == {0.0}
        assert summary["across_sets"]["margin_95"] == 0.0
        assert "exact" in report.render.sample_note(sample, 0)

    sample = report.collect(ten_shards, progress=False, sample_rows=8, seed=1)["sets"]["chatgpt"]["sample"]
    margins = sample["margin_95"]
    assert {"faithfulness.mean", "faithfulness.below.0.3", "word_overlap.mean", "recall.mean", "novelty.mean",
            "length.words.rewrite.mean", "length.clip_tokens.original.mean"} <= set(margins)
    per_shard = []  # (ok rewrites, their faithfulness) of each sampled shard
    for shard in chosen_shards(1, 8):
        scores = [faithful.faithfulness(caption_of(i), rewritten(caption_of(i), shard))
                  for i in (2 * shard, 2 * shard + 1) if i % 7 != 3]
        per_shard.append((len(scores), sum(scores)))
    ratio = sum(y for _, y in per_shard) / sum(x for x, _ in per_shard)
    spread = sum((y - ratio * x) ** 2 for x, y in per_shard) / 3
    expected = 1.959964 * math.sqrt((1 - 4 / 10) * spread / 4) / (sum(x for x, _ in per_shard) / 4)
    assert margins["faithfulness.mean"] == pytest.approx(expected) and expected > 0
    assert "margin of error" in report.render.sample_note(sample, 1)

    one = report.collect(ten_shards, progress=False, sample_rows=1)["sets"]["chatgpt"]["sample"]
    assert one["shards"] == 1 and not one["exact"] and set(one["margin_95"].values()) == {None}
    assert "from one shard no margin of error can be estimated" in report.render.sample_note(one, 0)


def test_margin_of_a_ratio_worked_by_hand():
    # R = 3/6; residuals 0, 1, -1: s^2 = 2/2 = 1; se = sqrt((1 - 3/10) * 1 / 3) / (6/3).
    assert report.tallies.margin_95([(2, 1), (2, 2), (2, 0)], 10) == pytest.approx(1.959964 * math.sqrt(0.7 / 3) / 2)
    assert report.tallies.margin_95([(2, 1), (2, 2), (2, 0)], 3) == 0.0
    assert report.tallies.margin_95([(2, 1)], 10) is None and report.tallies.margin_95([(0, 0), (0, 0)], 10) is None


def test_each_set_is_sampled_from_its_own_done_shards():
    """Shards done in one set only: each set reads its done shards in the one seeded order until it has the
    rows asked for; a set with fewer rows than that has them all read."""
    done_by = {s: ["a", "b"] if s % 3 == 0 else ["a"] for s in range(12)}  # b: shards 0, 3, 6, 9
    chosen = report.from_work.sample(done_by, lambda shard: 2, 5, seed=7)
    order = random.Random(7).sample(range(12), 12)
    a = [s for s in order if s in chosen and "a" in chosen[s]]
    b = [s for s in order if s in chosen and "b" in chosen[s]]
    assert a == order[:3] and b == [s for s in order if s % 3 == 0][:3]
    assert report.from_work.sample(done_by, lambda shard: 2, 100, seed=7) == done_by
    assert report.from_work.sample(done_by, lambda shard: 2, 0, seed=7) == done_by


def test_the_report_says_where_its_per_row_figures_come_from(ten_shards, tmp_path):
    from conftest import run_cli

    said = run_cli("report", "--work", ten_shards, "--out", tmp_path / "r", "--sample-rows", "8", "--seed", "1",
                   "--no-progress").stdout
    line = next(text for text in said.splitlines() if text.startswith("chatgpt:"))
    assert re.search(r"faithfulness \d\.\d\d ± \d\.\d{3} \(below 0\.3", line), line
    assert line.endswith("per-row figures from 8 rows, 4/10 shards")
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert written["sampling"] == {"sample_rows": 8, "seed": 1} and written["sets"]["chatgpt"]["sample"]["rows"] == 8
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "from 8 of 20 rows: 4 of 10 done shards, each read whole, drawn at random (seed 1)" in page
    assert "± (95%)" in page and "sample.margin_95.faithfulness.mean" in page

    exact = run_cli("report", "--work", ten_shards, "--out", tmp_path / "all", "--sample-rows", "0").stdout
    assert "(exact)" in next(text for text in exact.splitlines() if text.startswith("chatgpt:"))


def test_a_bad_sample_size_is_refused_naming_the_option(ten_shards, tmp_path):
    from conftest import run_cli

    with pytest.raises(ReportError, match="--sample-rows -1: give a number of rows"):
        report.collect(ten_shards, progress=False, sample_rows=-1)
    bad = run_cli("report", "--work", ten_shards, "--out", tmp_path / "r", "--sample-rows", "-5", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --sample-rows -5: give a number of rows to read for the per-row figures, or 0 to read every row"]
    assert not (tmp_path / "r").exists()


def test_the_scale_benchmark_runs_at_toy_size(tmp_path):
    """bench/report_scale.py on 4 shards of 50 rows: it makes done shards the report accepts, times every
    row against a sample of one shard, and writes its extrapolation."""
    import subprocess
    import sys

    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "report_scale.py"),
                    "--shards", "4", "--rows-per-shard", "50", "--sample-rows", "50", "--out-json", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    every, sampled = result["results"]["all"], result["results"]["sample"]
    assert every["sample"]["exact"] and (every["sample"]["rows"], every["sample"]["shards"]) == (200, 4)
    assert not sampled["sample"]["exact"] and (sampled["sample"]["rows"], sampled["sample"]["shards"]) == (50, 1)
    assert every["rows"] == sampled["rows"] == 200 and every["valid_rate"] == sampled["valid_rate"]
    assert result["extrapolation"]["target_shards"] == 40_000 and result["extrapolation"]["first_rows_read_ms"] > 0
    assert "Extrapolated (not measured)" in out.with_suffix(".md").read_text()
