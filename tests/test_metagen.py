"""`rewrite meta generate` on the packaged model (its served form is tested in test_served_engines)."""
import json

import pytest

from rewrite import meta
from rewrite.meta import generate as metagen
from rewrite.engines.base import Completion
from rewrite.meta import MetaSetError


def test_captions_are_read_distinct_and_tidy(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("a dog\n\n  a   dog \nx => y\na cat\n", encoding="utf-8")
    assert metagen.read_captions(f) == ["a dog", "a cat"]
    with pytest.raises(MetaSetError, match="no such caption file"):
        metagen.read_captions(tmp_path / "none.txt")


def test_an_answer_is_judged_like_a_rewrite_and_kept_short():
    done = Completion("", 5, 5, "stop")
    assert metagen.judge('"A small dog naps."', "a dog", done) == ("A small dog naps.", None)
    assert metagen.judge("a dog", "a dog", done)[1] == "echo"
    long = " ".join(["word"] * 30)
    assert metagen.judge(long, "a dog", done) == (long, metagen.TOO_MANY_WORDS)


def test_generate_with_the_packaged_model_writes_a_valid_seeded_set(engine, text_file, tmp_path):
    first = metagen.generate(text_file, tmp_path / "a.jsonl", engine, count=3, seed=7)
    again = metagen.generate(text_file, tmp_path / "b.jsonl", engine, count=3, seed=7)
    assert meta.load_usable(str(first.path)).pairs == first.pairs and len(first.pairs) == 3
    assert first.pairs == again.pairs  # the draw and the sampling follow the seed
    prov = first.provenance
    assert prov["instruction"] == metagen.PAPER_INSTRUCTION and prov["seed"] == 7
    assert prov["counts"]["pairs"] == 3 and prov["counts"]["requests"] >= 3
    assert json.loads(first.path.read_text().splitlines()[0])["provenance"]["from"]["path"] == str(text_file.resolve())
    with pytest.raises(MetaSetError, match="fewer than the --count 99 pairs"):
        metagen.generate(text_file, tmp_path / "c.jsonl", engine, count=99)
