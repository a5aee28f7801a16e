"""Output folders of the training commands: checked first, filled only on success."""

from __future__ import annotations

import pytest

from training.output import check_writable, filled_on_success


def test_a_failed_block_leaves_nothing_behind(tmp_path):
    out = tmp_path / "runs" / "report"
    with pytest.raises(RuntimeError):
        with filled_on_success(out) as staging:
            (staging / "report.json").write_text("{}")
            raise RuntimeError("plotting failed")
    assert not out.exists() and list((tmp_path / "runs").iterdir()) == []


def test_a_successful_block_replaces_what_it_wrote_and_keeps_the_rest(tmp_path):
    out = tmp_path / "bundle"
    (out / "head").mkdir(parents=True)
    (out / "head" / "old.bin").write_text("old")
    (out / "bundle.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    with filled_on_success(out) as staging:
        (staging / "head").mkdir()
        (staging / "head" / "new.bin").write_text("new")
        (staging / "bundle.json").write_text("new")
    assert (out / "bundle.json").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert {p.name for p in (out / "head").iterdir()} == {"old.bin", "new.bin"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left


def test_an_output_under_a_file_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_writable(tmp_path / "a-file" / "out")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable(tmp_path / "a-file")
    check_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
