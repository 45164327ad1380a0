"""An output folder is published whole and only its own files are ever replaced (pure file work, fast)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rewrite.workdir import atomic
from rewrite.exports import publish

FILES = ["data/a.parquet", "data/b.parquet", "README.md"]


def export(out: Path, export_id: str, *, overwrite: bool = False, stop_after: int | None = None) -> publish.OutputFolder:
    with publish.OutputFolder(out, export_id, FILES, overwrite=overwrite) as folder:
        if folder.up_to_date:
            return folder
        folder.begin()
        for i, name in enumerate(FILES):
            if stop_after is not None and i == stop_after:
                return folder  # "killed" here
            if not folder.written(name):
                atomic.write_text(folder.path(name), f"{export_id}:{name}")
        folder.publish()
    return folder


def visible(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def test_nothing_is_visible_until_every_file_is_written(tmp_path):
    out = tmp_path / "out"
    export(out, "one", stop_after=2)
    assert visible(out) == {}
    export(out, "one")
    assert visible(out) == {name: f"one:{name}" for name in FILES}
    assert not (out / publish.STAGING).exists()
    assert export(out, "one").up_to_date


def test_a_replacement_cut_short_leaves_the_old_export_whole(tmp_path):
    out = tmp_path / "out"
    export(out, "one")
    with pytest.raises(publish.PublishError, match="earlier export"):
        export(out, "two")
    export(out, "two", overwrite=True, stop_after=1)
    assert visible(out) == {name: f"one:{name}" for name in FILES}
    export(out, "two", overwrite=True)
    assert visible(out) == {name: f"two:{name}" for name in FILES}


def test_a_publish_cut_between_its_renames_is_finished_by_a_rerun(tmp_path, monkeypatch):
    out = tmp_path / "out"
    export(out, "one")
    real = publish.storage.rename
    calls = []

    def crash_on_readme(src, dst):
        calls.append(Path(dst))
        if Path(dst) == out / "README.md":
            raise KeyboardInterrupt  # killed after data/ moved in, before the card
        return real(src, dst)

    monkeypatch.setattr(publish.storage, "rename", crash_on_readme)
    with pytest.raises(KeyboardInterrupt):
        export(out, "two", overwrite=True)
    monkeypatch.setattr(publish.storage, "rename", real)
    assert out / "data" in calls  # it was cut after the new data/ moved in
    assert visible(out)["data/a.parquet"] == "two:data/a.parquet" and visible(out)["README.md"] == "one:README.md"
    export(out, "two", overwrite=True)
    assert visible(out) == {name: f"two:{name}" for name in FILES}
    assert not (out / publish.STAGING).exists()


def test_files_the_tool_did_not_write_are_never_touched(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "inputs.parquet").write_text("keep")
    with pytest.raises(publish.PublishError, match="was not written by `rewrite export`"):
        export(theirs, "one", overwrite=True)
    assert (theirs / "inputs.parquet").read_text() == "keep"

    out = tmp_path / "out"
    export(out, "one")
    (out / "notes.txt").write_text("mine")
    (out / "data" / "c.parquet").write_text("dropped in")
    with pytest.raises(publish.PublishError, match="c.parquet was not written"):
        export(out, "two", overwrite=True)
    (out / "data" / "c.parquet").unlink()
    export(out, "two", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(publish.PublishError, match="is a file"):
        export(out / "notes.txt", "three")


def test_processes_of_one_export_stage_together_and_the_last_publishes(tmp_path):
    """Array tasks staging the same export share OUT; another export waits until they are done; only a
    process alone in OUT publishes."""
    out = tmp_path / "out"
    first = publish.OutputFolder(out, "one", FILES, overwrite=False)
    first.begin()
    atomic.write_text(first.path(FILES[0]), "one:" + FILES[0])
    with publish.OutputFolder(out, "one", FILES, overwrite=False) as second:  # the same export joins
        second.begin()
        for name in FILES[1:]:
            atomic.write_text(second.path(name), "one:" + name)
        assert not second.alone()  # the first still stages: not ours to publish
        other = publish.OutputFolder(out, "two", FILES, overwrite=True)
        with pytest.raises(publish.Busy, match="another export is writing"):
            other.begin()
    assert first.alone()
    first.publish()
    first.close()
    assert visible(out) == {name: f"one:{name}" for name in FILES}
    assert export(out, "one").up_to_date


def test_a_published_file_damaged_later_is_exported_again(tmp_path):
    out = tmp_path / "out"
    export(out, "one")
    (out / "data" / "a.parquet").write_text("cut")
    assert not export(out, "one").up_to_date  # same export, no --overwrite needed
    assert visible(out) == {name: f"one:{name}" for name in FILES}


def test_a_temporary_file_left_by_a_killed_writer_is_never_published(tmp_path):
    out = tmp_path / "out"
    folder = publish.OutputFolder(out, "one", FILES, overwrite=False)
    folder.begin()
    leftover = folder.path("data/.b.parquet.0123456789abcdef.tmp")  # as atomic.temp_beside names them
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text("cut")
    for name in FILES:
        atomic.write_text(folder.path(name), "one:" + name)
    assert folder.alone()
    folder.publish()
    folder.close()
    assert visible(out) == {name: f"one:{name}" for name in FILES}
    assert not list(out.rglob("*.tmp"))
