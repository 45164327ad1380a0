"""The faithfulness measure and its gate: pure functions, checked against values worked out by hand."""
from pathlib import Path

import pytest

from rewrite.rewriting import faithful, validate
from rewrite.run import runner
from rewrite import defaults
from rewrite.engines.base import Completion
from rewrite.run.config import RunConfig, RunError, set_configs


def test_content_words_drop_function_words_and_meet_across_word_forms():
    assert faithful.content_words("A photo of the dogs playing in a park") == {"dog", "play", "park"}
    assert faithful.content_words("Two puppies played; the puppy runs") == {"two", "puppy", "play", "run"}
    assert faithful.content_words("the glass on a bus") == {"glass", "bus"}  # no "-s" stripped from -ss / short words
    assert faithful.content_words("IMG of it") == {"img"}
    assert faithful.content_words("a of the") == set()


def test_content_words_through_the_word_cache_are_the_uncached_ones(monkeypatch):
    """content_words keeps each word's verdict in a dict (replaced when full); the words are those of its
    definition: the words found, case-folded, less function words and single letters, stemmed."""
    def uncached(text):
        words = (w.casefold() for w in faithful._WORD.findall(text))
        return frozenset(faithful.stem(w) for w in words if w not in faithful.STOPWORDS and not (len(w) == 1 and w.isalpha()))

    texts = [line for line in (Path(__file__).parents[1] / "demo" / "captions.txt").read_text(encoding="utf-8").splitlines()]
    texts += ["The DOGS' toys, a dog's toy", "x y z 3 4", "Ça va? ÉCOLE écoles", "it's IT'S its", ""]
    monkeypatch.setattr(faithful, "_WORD_CACHE_MAX", 50)  # replaced again and again on the way
    for _ in range(2):
        assert [faithful.content_words(t) for t in texts] == [uncached(t) for t in texts]


def test_recall_novelty_and_faithfulness_by_hand():
    caption, rewrite = "a dog runs on the beach", "A happy dog running along a sandy shore"
    # caption: {dog, run, beach}; rewrite: {happy, dog, run, sandy, shore}; kept {dog, run}
    assert faithful.recall(caption, rewrite) == pytest.approx(2 / 3)
    assert faithful.novelty(caption, rewrite) == pytest.approx(3 / 5)
    p, r = 2 / 5, 2 / 3
    assert faithful.faithfulness(caption, rewrite) == pytest.approx(2 * p * r / (p + r))
    assert faithful.faithfulness(caption, "the dog, on a beach, runs") == 1.0
    assert faithful.faithfulness(caption, "a red car parked downtown") == 0.0
    assert faithful.faithfulness("of the", "a dog") is None  # nothing to judge
    assert faithful.recall("of the", "a dog") is None and faithful.novelty("a dog", "of the") is None


def test_the_gate_rejects_only_when_asked_and_below_the_bar():
    done = Completion("x\n", 10, 2, "stop")
    caption = "a dog runs on the beach"
    invented = "A red sports car parked in a busy downtown street"
    assert validate.check(invented, caption, done, []) is None
    assert validate.check(invented, caption, done, [], min_faithfulness=0.2) == validate.UNFAITHFUL
    kept = "A happy dog running along a sandy beach"
    assert validate.check(kept, caption, done, [], min_faithfulness=0.5) is None
    assert validate.check("Lovely.", "Here it is!", done, [], min_faithfulness=0.9) is None  # nothing to judge


def test_min_faithfulness_is_checked_and_only_fingerprinted_when_set():
    with pytest.raises(RunError, match="--min-faithfulness"):
        RunConfig(source="bard", min_faithfulness=1.5)
    from rewrite import meta
    from rewrite.rewriting import prompt
    args = (meta.load("bard"), prompt.load_template(), "transformers", "m")
    assert "min_faithfulness" not in RunConfig(source="bard").fingerprint(*args)
    assert RunConfig(source="bard", min_faithfulness=0.2).fingerprint(*args)["min_faithfulness"] == 0.2


def test_source_lists():
    assert defaults.source_list("chatgpt") == ["chatgpt"]
    assert defaults.source_list(" bard, mine.jsonl ") == ["bard", "mine.jsonl"]
    assert defaults.source_list("all") == list(defaults.SOURCES)
    with pytest.raises(ValueError, match="names no meta set"):
        defaults.source_list(" , ")


def test_sets_named_like_shipped_ones_can_come_from_a_folder(tmp_path):
    configs = set_configs(["chatgpt", "mscoco", str(tmp_path / "mine.jsonl")], tmp_path / "paper")
    assert [c.source for c in configs] == ["chatgpt", "coco", "mine"]
    assert [c.meta_file for c in configs] == [str(tmp_path / "paper" / "chatgpt.jsonl"),
                                             str(tmp_path / "paper" / "coco.jsonl"), str(tmp_path / "mine.jsonl")]
    assert [c.meta_file for c in set_configs(["bard"])] == [None]


@pytest.mark.slow  # two runs of the embedded model, with retries
def test_the_gate_in_a_real_run_rejects_retries_and_records_its_reason(engine, text_file, tmp_path):
    """On the embedded model: with a bar no rewrite reaches, every judged row fails as unfaithful; with a
    usual bar, every kept rewrite meets it."""
    import pyarrow.parquet as pq

    from rewrite.inputs import plan

    work = tmp_path / "work"
    plan.plan([str(text_file)], work, num_shards=1)
    strict = RunConfig(source="human", max_attempts=1, min_faithfulness=0.999)
    stats = runner.run(work, strict, [0], engine, progress=False)[0]
    # One request per distinct caption; the few the gate does not judge fail for another reason.
    assert stats["ok"] <= 1 and stats["rejected"].get(validate.UNFAITHFUL, 0) >= stats["requests"] - 2
    rows = pq.read_table(work / "rewrites" / "human" / "00000.parquet").to_pylist()
    assert validate.UNFAITHFUL in {r["reason"] for r in rows if r["status"] == "failed"}

    usual = RunConfig(source="bard", min_faithfulness=0.3)
    runner.run(work, usual, [0], engine, progress=False)
    captions = text_file.read_text(encoding="utf-8").splitlines()
    for row, caption in zip(pq.read_table(work / "rewrites" / "bard" / "00000.parquet").to_pylist(), captions):
        if row["status"] == "ok":
            assert faithful.faithfulness(caption, row["rewrite"]) >= 0.3, (caption, row["rewrite"])
