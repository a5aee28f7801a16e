"""``patchsight synth``: write labelled recordings of the synthetic production line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="The synthetic production line.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="directory for the recordings (one per camera: OUT/<line>/<camera>)"),
    lines: int = typer.Option(3, min=1, max=26, help="production lines (line-a, line-b, ...)"),
    cameras: int = typer.Option(2, min=1, help="cameras per line"),
    frames: int = typer.Option(300, min=1, help="frames per camera"),
    seed: int = typer.Option(0, help="same seed, same recordings, byte for byte"),
    fps: float = typer.Option(10.0, min=0.1, help="frame rate the recordings claim"),
    defect_rate: float = typer.Option(0.25, min=0.0, max=1.0, help="fraction of parts with a defect"),
    width: int = typer.Option(None, min=160, help="frame width (default: 640 for parts, 512 for fabric)",
                              show_default=False),
    height: int = typer.Option(None, min=120, help="frame height (default: 480 for parts, 384 for fabric)",
                               show_default=False),
    jpeg_quality: int = typer.Option(90, min=10, max=100),
    close_together: bool = typer.Option(
        False, "--close-together", help="parts follow each other on a loaded belt: a frame shows the leaving part "
        "and the entering one (default: one part at a time, with gaps of empty belt)"),
    spacing: str = typer.Option(
        None, help="parts close together with MIN-MAX pixels (of a 640-wide frame) of empty belt between "
        "them; implies --close-together (default: 40-160)", show_default=False),
    drift: str = typer.Option(
        None, help="inject drift from --drift-start on: lighting (the light dims), blur (focus lost) or shift "
        "(the camera was knocked); see docs/drift.md", show_default=False),
    drift_start: int = typer.Option(None, min=0, help="first drifted frame of each camera (default: half of --frames)",
                                    show_default=False),
    drift_strength: float = typer.Option(0.6, min=0.01, max=1.0, help="how strong the drift is, 0-1"),
    product: str = typer.Option(
        "parts", help="parts: the synthetic line's parts on a belt; fabric: cut sheets of woven fabric, the family "
        "kept out of all training to measure transfer (docs/synth.md)"),
    defect_types: str = typer.Option(
        None, "--defect-types", help="fabric: the defects drawn: small (hole, pulled_thread, knot), large (stain, "
        "weave_fault), all, or a comma-separated list (default: all)", show_default=False),
) -> None:
    """Render parts passing cameras on a conveyor (or sheets of fabric) and record them with per-frame ground truth."""
    from ingest.synth import CLOSE_SPACING, SynthDrift, write_recordings

    console = Console(stderr=True)
    if product not in ("parts", "fabric"):
        console.print(f"[red]synth failed:[/] --product is parts or fabric, got {product!r}")
        raise typer.Exit(2)
    if product == "fabric":
        from ingest.fabric import FABRIC_SIZE, parse_defect_types, write_fabric_recordings

        if close_together or spacing is not None or drift is not None:
            console.print("[red]synth failed:[/] --close-together, --spacing and --drift are for --product parts")
            raise typer.Exit(2)
        try:
            types = parse_defect_types(defect_types)
        except ValueError as exc:
            console.print(f"[red]synth failed:[/] --defect-types: {exc}")
            raise typer.Exit(2) from None
        size = (width or FABRIC_SIZE[0], height or FABRIC_SIZE[1])

        def render(tick):  # type: ignore[no-untyped-def]
            return write_fabric_recordings(out, lines=lines, cameras=cameras, frames=frames, seed=seed, fps=fps,
                                           defect_rate=defect_rate, size=size, jpeg_quality=jpeg_quality,
                                           on_frame=tick, defect_types=types)

        _render(render, lines * cameras * frames, out, console)
        return
    if defect_types is not None:
        console.print("[red]synth failed:[/] --defect-types is for --product fabric")
        raise typer.Exit(2)
    gaps: tuple[float, float] | None = CLOSE_SPACING if close_together else None
    if spacing is not None:
        try:
            lo, _, hi = spacing.partition("-")
            gaps = (float(lo), float(hi or lo))
        except ValueError:
            console.print(f"[red]synth failed:[/] --spacing takes MIN-MAX pixels, e.g. 40-160, got {spacing!r}")
            raise typer.Exit(2) from None
    injected = None
    if drift is not None:
        try:
            injected = SynthDrift(drift, frames // 2 if drift_start is None else drift_start, drift_strength)  # type: ignore[arg-type]
        except ValueError as exc:
            console.print(f"[red]synth failed:[/] --drift: {exc}")
            raise typer.Exit(2) from None

    def render(tick):  # type: ignore[no-untyped-def]
        return write_recordings(
            out, lines=lines, cameras=cameras, frames=frames, seed=seed, fps=fps, defect_rate=defect_rate,
            size=(width or 640, height or 480), jpeg_quality=jpeg_quality, on_frame=tick, spacing=gaps,
            drift=injected,
        )

    _render(render, lines * cameras * frames, out, console)


def _render(render, total: int, out: Path, console: Console) -> None:  # type: ignore[no-untyped-def]
    """Run ``render(tick)`` (it writes the recordings, calling ``tick`` once a frame) under a progress bar."""
    from ingest.recording import RecordingError

    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]synth[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(), console=console,
    ) as progress:
        task = progress.add_task("frames", total=total, rate="")
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if done % 25 == 0 or done == total:
                progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.0f} frames/s")

        try:
            paths = render(tick)
        except (RecordingError, ValueError, OSError) as exc:  # OSError: --out cannot be written
            console.print(f"[red]synth failed:[/] {exc}")
            raise typer.Exit(1) from None
    dt = time.perf_counter() - t0
    console.print(f"{total} frames in {dt:.1f}s ({total / dt:.0f} frames/s) -> {len(paths)} recordings under {out}")
    for path in paths:
        typer.echo(str(path))
