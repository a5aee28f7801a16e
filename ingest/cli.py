"""Ingest commands: run the cameras, record, replay.

``run`` is mounted as ``patchsight ingest``; ``record`` and ``replay`` are plain functions
decorated on ``app`` so ``patchsight`` can also register them at top level
(``app.command("record")(record)``). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from runtime.cli_options import ConfigOption, config_or_exit, kafka_or_exit

app = typer.Typer(
    help="Cameras -> Kafka frames topic: run live cameras, record them, replay recordings.",
    no_args_is_help=True,
)


@app.command("run")
def run(
    config: ConfigOption = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(help="Serve Prometheus counters on this port (0: any free port). Default: ingest.metrics_port."),
    ] = None,
) -> None:
    """Start every configured camera, one process each, publishing to the frames topic.

    Runs until Ctrl-C or SIGTERM. A lost camera is reported and left stopped; exits 1 once
    every camera is lost.
    """
    from ingest.camera import run_cameras

    cfg = config_or_exit(config)
    raise typer.Exit(run_cameras(cfg, metrics_port=metrics_port))


def _progress(total: Optional[int], description: str):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, transient=False)
    task = progress.add_task(description, total=total)
    return progress, task


@app.command("record")
def record(
    out: Annotated[Path, typer.Argument(help="Directory to write the recording to (must not hold one already).")],
    config: ConfigOption = None,
    camera: Annotated[
        Optional[str], typer.Option("--camera", help="Camera id from the config (with --from-topic: keep only it).")
    ] = None,
    from_topic: Annotated[
        bool, typer.Option("--from-topic", help="Record what is on the frames topic instead of a camera source.")
    ] = False,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many frames.")] = None,
    duration: Annotated[Optional[float], typer.Option(min=0.0, help="Stop after this many seconds.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="With --from-topic: only frames published from now on.")] = False,
    idle_timeout: Annotated[
        float, typer.Option(help="With --from-topic: stop after this many seconds without a new frame (0: never).")
    ] = 10.0,
) -> None:
    """Save a camera, or a frames topic, to a recording (docs/recording-format.md).

    From a camera, --frames or --duration bounds the recording (or Ctrl-C). From a topic,
    every camera found becomes OUT/<camera id>, unless --camera picks one.
    """
    from ingest.record import record_camera, record_topic
    from ingest.recording import RecordingError
    from ingest.sources import CameraLost

    cfg = config_or_exit(config)
    stop = threading.Event()
    progress, task = _progress(frames, f"recording {camera or cfg.kafka.topics.frames}")
    try:
        with kafka_or_exit(cfg.kafka, "record failed"), progress:
            if from_topic:
                counts = record_topic(
                    cfg, out, camera_id=camera, frames=frames, duration_s=duration, from_beginning=not latest,
                    idle_timeout_s=idle_timeout or None, stop=stop,
                    on_frame=lambda n: progress.update(task, completed=n),
                )
            else:
                if frames is None and duration is None:
                    typer.secho("recording a camera needs --frames or --duration", fg=typer.colors.RED, err=True)
                    raise typer.Exit(2)
                found = [(line.id, c) for line in cfg.lines for c in line.cameras if c.id == camera]
                if not found or found[0][1].source is None:
                    typer.secho(f"no camera {camera!r} with a source in the config", fg=typer.colors.RED, err=True)
                    raise typer.Exit(2)
                line_id, cam = found[0]
                n = record_camera(
                    line_id, cam, cfg, out, frames=frames, duration_s=duration, stop=stop,
                    on_frame=lambda n: progress.update(task, completed=n),
                )
                counts = {cam.id: n}
    except KeyboardInterrupt:
        stop.set()
        typer.echo("interrupted; the recording keeps the frames written so far", err=True)
        raise typer.Exit(130) from None
    except (RecordingError, CameraLost, ValueError, OSError) as exc:  # OSError: OUT cannot be written
        typer.secho(f"record failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(", ".join(f"{cam}: {n} frames" for cam, n in counts.items()) or "no frames recorded")


@app.command("replay")
def replay(
    recordings: Annotated[list[Path], typer.Argument(help="One or more recording directories.")],
    config: ConfigOption = None,
    speed: Annotated[
        Optional[float], typer.Option(min=0.001, help="Pace: 1 = original, 4 = four times faster. Default: original.")
    ] = 1.0,
    fast: Annotated[bool, typer.Option("--fast", help="As fast as Kafka takes frames (ignores --speed).")] = False,
    loop: Annotated[int, typer.Option(min=0, help="Play this many times; 0 loops until Ctrl-C.")] = 1,
    recorded_timestamps: Annotated[
        bool,
        typer.Option(
            "--recorded-timestamps",
            help="Publish the recorded capture times instead of the publish time (latency then looks wrong).",
        ),
    ] = False,
) -> None:
    """Publish recordings as their lines and cameras (mode=replay), deterministically.

    The same recording always yields the same keys, sequence numbers and payloads; capture_ns
    is the publish time unless --recorded-timestamps. Exits 1 if any frame was not delivered.
    """
    from ingest.recording import Recording, RecordingError
    from ingest.replay import replay as run_replay

    cfg = config_or_exit(config)
    try:
        total = sum(len(Recording(p)) for p in recordings) * loop if loop else None
    except RecordingError as exc:
        typer.secho(f"replay failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    stop = threading.Event()
    # SIGTERM (a supervisor, the demo) stops like Ctrl-C: what was sent is flushed first.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    progress, task = _progress(total, f"replaying {len(recordings)} recording(s)")
    try:
        with progress:
            result = run_replay(
                list(recordings), cfg, speed=None if fast else speed, loop=True if loop == 0 else loop,
                timestamps="recorded" if recorded_timestamps else "publish", stop=stop,
                on_frame=lambda _: progress.advance(task),
            )
    except KeyboardInterrupt:
        stop.set()
        raise typer.Exit(130) from None
    except RecordingError as exc:
        typer.secho(f"replay failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    c = result.counters
    typer.echo(
        f"published {c['published']} of {result.frames} frames; failed {c['failed']}, "
        f"downscaled {c['downscaled']}, rejected {c['rejected']}"
    )
    if c["failed"] or c["rejected"] or c["published"] < result.frames:
        raise typer.Exit(1)


@app.command("label")
def label(
    recording: Annotated[Path, typer.Argument(help="Recording folder to label.", exists=True, file_okay=False)],
    question: Annotated[str, typer.Option("--question", "-q", help="Question id, as in the line config.")],
    yes: Annotated[Optional[list[str]], typer.Option("--yes", help="Seq or seq range showing the defect.")] = None,
    no: Annotated[Optional[list[str]], typer.Option("--no", help="Seq or seq range without it.")] = None,
    no_rest: Annotated[bool, typer.Option("--no-rest", help="Answer 'no' for frames not answered yet.")] = False,
) -> None:
    """Write yes/no ground truth for one question into a recording, for finetuning and evaluation."""
    from ingest.label import label_recording, parse_ranges
    from ingest.recording import RecordingError

    try:
        counts = label_recording(recording, question, parse_ranges(yes or []), parse_ranges(no or []), no_rest)
    except (ValueError, RecordingError) as exc:
        typer.secho(f"label: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{recording}: {question}: {counts['yes']} yes, {counts['no']} no")
