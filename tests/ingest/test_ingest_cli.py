import subprocess
import sys

import yaml
from typer.testing import CliRunner

from ingest.cli import app
from ingest.recording import Recording
from ingest_helpers import consume, write_images
from runtime.topics import ensure_topics
from test_replay import make_recording

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "record", "replay"):
        assert command in result.output


def test_record_a_camera_then_replay_it_from_the_command_line(make_config, tmp_path):
    config = make_config(lines=[{
        "id": "line-c", "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}],
        "cameras": [{"id": "cam-c", "fps": 50.0, "source": {"images": str(write_images(tmp_path / "imgs", 2))}}],
    }])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = runner.invoke(app, ["record", str(tmp_path / "rec"), "-c", str(path), "--camera", "cam-c", "--frames", "5"])
    assert result.exit_code == 0, result.output
    assert len(Recording(tmp_path / "rec")) == 5

    ensure_topics(config.kafka, [config.kafka.topics.frames])
    result = runner.invoke(app, ["replay", str(tmp_path / "rec"), str(make_recording(tmp_path / "other")),
                                 "-c", str(path), "--fast", "--loop", "2"])
    assert result.exit_code == 0, result.output
    assert "published 22 of 22 frames" in result.output
    assert len(consume(config.kafka, config.kafka.topics.frames, 22)) == 22


def test_bad_arguments_exit_with_a_message(tmp_path):
    result = runner.invoke(app, ["record", str(tmp_path / "rec"), "--camera", "nope", "--frames", "1"])
    assert result.exit_code == 2 and "no camera 'nope'" in result.output
    result = runner.invoke(app, ["replay", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not a recording" in result.output


def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback(make_config, tmp_path):
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "out"  # its parent is a file: no one can create it, root included
    config = make_config(lines=[{
        "id": "line-c", "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}],
        "cameras": [{"id": "cam-c", "fps": 50.0, "source": {"images": str(write_images(tmp_path / "imgs", 2))}}],
    }])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = runner.invoke(app, ["record", str(unwritable), "-c", str(path), "--camera", "cam-c", "--frames", "2"])
    assert result.exit_code == 1 and "record failed" in result.output, result.output
    # in its own process: the top-level command configures logging for the process it runs in
    synth = subprocess.run([sys.executable, "-m", "patchsight.cli", "synth", "--out", str(unwritable), "--frames", "2",
                            "--lines", "1"], capture_output=True, text=True, check=False)
    assert synth.returncode == 1 and "synth failed" in synth.stdout + synth.stderr, synth.stdout + synth.stderr
    assert "Traceback" not in synth.stderr
