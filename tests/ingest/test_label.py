"""Labelling a recording writes answers into its index, atomically and checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ingest.label import label_recording, parse_ranges
from ingest.recording import FrameTruth, Recording, RecordingError, RecordingMeta, RecordingWriter


def make_recording(path: Path, frames: int = 10) -> Path:
    meta = RecordingMeta(line_id="line-a", camera_id="cam-1", fps=10, width=4, height=4)
    with RecordingWriter(path, meta) as writer:
        for seq in range(frames):
            truth = FrameTruth(answers={"crack": False}) if seq == 0 else None
            writer.append(seq, 1000 + seq, b"\xff\xd8" + bytes([seq]) + b"\xff\xd9", truth)
    return path


def test_yes_ranges_and_no_rest(tmp_path: Path) -> None:
    rec = make_recording(tmp_path / "rec")
    counts = label_recording(rec, "scratch", yes=parse_ranges(["3-5", "8"]), no_rest=True)
    assert counts == {"yes": 4, "no": 6}
    truth = Recording(rec).truth()
    assert [s for s, t in sorted(truth.items()) if t.answers["scratch"]] == [3, 4, 5, 8]
    assert truth[0].answers["crack"] is False  # other questions are kept
    assert "scratch" in truth[4].defects and "scratch" not in truth[2].defects
    assert Recording(rec).meta.labelled
    # frames are untouched
    assert [jpeg for _, jpeg in Recording(rec).frames()][3] == b"\xff\xd8\x03\xff\xd9"


def test_relabelling_a_frame_no_removes_the_defect(tmp_path: Path) -> None:
    rec = make_recording(tmp_path / "rec")
    label_recording(rec, "scratch", yes=[(2, 4)])
    label_recording(rec, "scratch", no=[(3, 3)])
    truth = Recording(rec).truth()
    assert truth[3].answers["scratch"] is False and "scratch" not in truth[3].defects
    assert truth[2].answers["scratch"] is True


@pytest.mark.parametrize("spec", ["x", "5-", "9-3", "-2"])
def test_bad_ranges_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_ranges([spec])


def test_conflicting_answers_are_refused(tmp_path: Path) -> None:
    rec = make_recording(tmp_path / "rec")
    with pytest.raises(RecordingError, match="both yes and no"):
        label_recording(rec, "scratch", yes=[(1, 5)], no=[(5, 6)])


def test_a_range_with_no_frame_or_a_bad_question_id_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    rec = make_recording(tmp_path / "rec")
    before = (rec / "index.jsonl").read_bytes()
    with pytest.raises(RecordingError, match=r"no frame has a seq in 40-45 .*seqs 0-9"):
        label_recording(rec, "scratch", yes=[(2, 3), (40, 45)])
    with pytest.raises(ValueError, match="not a question id"):
        label_recording(rec, "bad id!", yes=[(2, 3)])
    assert (rec / "index.jsonl").read_bytes() == before


def test_cli(tmp_path: Path) -> None:
    rec = make_recording(tmp_path / "rec")
    out = subprocess.run([sys.executable, "-m", "patchsight.cli", "label", str(rec), "-q", "stain", "--yes", "1-2",
                          "--no-rest"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 yes, 8 no" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "patchsight.cli", "label", str(rec), "-q", "stain", "--yes", "7-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "backwards" in bad.stderr
