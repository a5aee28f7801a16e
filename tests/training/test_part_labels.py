"""`model label-parts`: a recording of your own gets its part ids from the camera's part tracker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.recording import FrameTruth, Recording, RecordingError, RecordingMeta, RecordingWriter, find_recordings
from training.cli import model_app
from training.part_labels import label_parts


@pytest.fixture(scope="module")
def synth_recording(tmp_path_factory) -> Recording:
    out = tmp_path_factory.mktemp("synth")
    made = subprocess.run([sys.executable, "-m", "patchsight.cli", "synth", "--out", str(out), "--lines", "1",
                           "--cameras", "1", "--frames", "80", "--seed", "5"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return Recording(find_recordings([out])[0])


def without_part_ids(source: Recording, out: Path) -> Path:
    """The same frames and answers as a plant's labelled recording has them: no part ids."""
    with RecordingWriter(out, source.meta.model_copy()) as writer:
        for entry, jpeg in source.frames():
            truth = entry.truth.model_copy(update={"part_id": None}) if entry.truth else None
            writer.append(entry.seq, entry.capture_ns, jpeg, truth)
    return out


def test_parts_are_named_as_the_tracker_follows_them_one_name_per_physical_part(synth_recording, tmp_path):
    stripped = without_part_ids(synth_recording, tmp_path / "stripped")
    named = label_parts(stripped)
    truth_of = {e.seq: e.truth.part_id for e in synth_recording.entries if e.truth is not None}
    ids = {e.seq: e.truth.part_id for e in Recording(stripped).entries if e.truth and e.truth.part_id is not None}
    assert named == {"parts": len(set(ids.values())), "frames": len(ids)} and named["parts"] >= 3
    # every named frame shows a real part, each name is one physical part and each part one name
    assert all(truth_of[seq] is not None for seq in ids)
    pairs = {(ids[seq], truth_of[seq]) for seq in ids}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    answers = {e.seq: e.truth.answers for e in Recording(stripped).entries if e.truth}
    assert answers == {e.seq: e.truth.answers for e in synth_recording.entries if e.truth}  # answers kept


def test_a_recording_that_names_its_parts_is_refused_and_left_as_it_was(synth_recording):
    before = (synth_recording.path / "index.jsonl").read_bytes()
    with pytest.raises(RecordingError, match="already names the parts"):
        label_parts(synth_recording.path)
    assert (synth_recording.path / "index.jsonl").read_bytes() == before
    result = CliRunner().invoke(model_app, ["label-parts", str(synth_recording.path)])
    assert result.exit_code == 1 and "already names the parts" in " ".join(result.output.split())


def test_cli_names_the_parts_of_every_recording_it_is_given(synth_recording, tmp_path):
    stripped = without_part_ids(synth_recording, tmp_path / "recs" / "a")
    # frames no decoder reads show no part: nothing is named, the answers stay
    meta = RecordingMeta(line_id="line-a", camera_id="cam-1", fps=10, width=4, height=4)
    with RecordingWriter(tmp_path / "recs" / "b", meta) as writer:
        writer.append(0, 1000, b"\xff\xd8\x00\xff\xd9", FrameTruth(answers={"crack": False}))
    result = CliRunner().invoke(model_app, ["label-parts", str(tmp_path / "recs")])
    assert result.exit_code == 0, result.output
    assert f"{stripped}: " in result.output and "b: 0 parts on 0 frames" in result.output
    assert Recording(tmp_path / "recs" / "b").truth()[0].answers == {"crack": False}
