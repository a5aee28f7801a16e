"""``patchsight alerts ...`` and ``patchsight dashboard``."""

from __future__ import annotations

import getpass
import time
from typing import Annotated, Optional

import typer
from rich.console import Console

from runtime.cli_options import ConfigOption, config_or_exit, kafka_or_exit

app = typer.Typer(help="Turn inspection results into alerts in Redis (one per defective part); follow and drive them.", no_args_is_help=True)
console = Console()

ByOption = Annotated[str, typer.Option("--by", help="Who does it (recorded on the alert). Default: your user name.")]
LineOption = Annotated[Optional[list[str]], typer.Option("--line", "-l", help="Only this line (repeatable).")]


def store_or_exit(config: ConfigOption):  # type: ignore[no-untyped-def]
    """The config and the alert store, once Redis has answered; otherwise one line and exit 1."""
    from redis.exceptions import RedisError

    from alerts.store import RedisAlertStore, connect
    from schemas.redaction import redact

    cfg = config_or_exit(config)
    client = connect(cfg.redis)
    try:
        client.ping()
    except RedisError as exc:
        typer.secho(redact(f"cannot reach Redis at {cfg.redis.url}: {exc} (is it running? `patchsight infra status`)"),
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    return cfg, RedisAlertStore(client, cfg.alerts)


@app.command()
def serve(
    config: ConfigOption = None,
    instance: Annotated[Optional[str], typer.Option(help="Instance id (default: host-pid).")] = None,
) -> None:
    """Consume inspection results and raise alerts, one per defective part (runs until SIGTERM / Ctrl-C)."""
    import signal
    import threading

    from alerts.service import AlertService, AlertServiceError

    cfg = config_or_exit(config)
    stop = threading.Event()
    # Finish the batch in hand, commit it, then exit.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with kafka_or_exit(cfg.kafka, "alert service failed"), AlertService(cfg, instance) as service:
            service.run(stop)
    except AlertServiceError as exc:
        typer.secho(f"alert service failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _findings(alert) -> str:  # type: ignore[no-untyped-def]
    """Every question over its threshold, strongest first: "scratch 0.91, missing_screw 0.72@cam-2"."""
    findings = alert.findings or []
    if not findings:
        return f"{alert.defect_type} {alert.score:.2f}"
    return ", ".join(f"{f.defect_type} {f.score:.2f}" + (f"@{f.camera_id}" if f.camera_id != alert.camera_id else "")
                     for f in findings)


def _print_event(event) -> None:  # type: ignore[no-untyped-def]
    from rich.markup import escape

    a = event.alert
    colour = {"raised": "bold red", "updated": "red", "acknowledged": "yellow", "resolved": "green",
              "verdict": "cyan"}.get(event.event, "white")
    when = time.strftime("%H:%M:%S", time.localtime(event.ts_ns / 1e9))
    who = f" by {event.by}" if event.by else ""
    if event.verdict is not None:
        who = f" {event.verdict.label}" + (f" ({event.verdict.defect_type})" if event.verdict.defect_type else "") + who
    part = f" part {a.part_id}" if a.part_id else ""
    console.print(
        f"{when} [{colour}]{event.event:<12}[/] {a.line_id}/{a.camera_id}{part} [bold]{escape(_findings(a))}[/] "
        f"frames {a.first_seq}-{a.last_seq}{who}  [dim]{a.alert_id}[/]",
        highlight=False,
    )


@app.command()
def tail(
    config: ConfigOption = None,
    line: LineOption = None,
    history: Annotated[int, typer.Option(help="Show this many recent events per line first.")] = 10,
) -> None:
    """Follow alert events live in the terminal (Ctrl-C to stop)."""
    cfg, store = store_or_exit(config)
    lines = line or sorted(set(store.lines()) | {entry.id for entry in cfg.lines})
    if not lines:
        console.print("[yellow]no lines known yet[/] (none configured, none seen in Redis); pass --line")
        raise typer.Exit(1)
    console.print(f"[dim]following {', '.join(lines)}[/]")
    recent = sorted((e for name in lines for e in store.events(name)[-history:]), key=lambda e: e.ts_ns) if history else []
    for event in recent:
        _print_event(event)
    try:
        for event in store.follow(lines):
            if event is not None:
                _print_event(event)
    except KeyboardInterrupt:
        pass


@app.command("list")
def list_alerts(config: ConfigOption = None, line: LineOption = None) -> None:
    """Show the alerts not yet resolved."""
    from rich.table import Table

    _, store = store_or_exit(config)
    # In a narrow terminal the cells fold rather than end in "…": "part_f…" could be any of
    # several defects, and the id must stay whole to be acknowledged.
    table = Table()
    for name in ("state", "line/camera", "part", "findings"):
        table.add_column(name, overflow="fold")
    for name in ("score", "frames", "raised", "id"):
        table.add_column(name, no_wrap=True)
    today = time.strftime("%Y-%m-%d")
    for name in line or [None]:
        for a in store.list_alerts(name):
            table.add_row(a.state.value, f"{a.line_id}/{a.camera_id}", a.part_id or "-", _findings(a),
                          f"{a.score:.2f}", f"{a.first_seq}-{a.last_frame_seq}", _raised_at(a.raised_ns, today),
                          a.alert_id)
    console.print(table)


def _raised_at(ns: int, today: str) -> str:
    """Local time; the date only when it is not today, to keep the table narrow."""
    day, clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)).split()
    return clock if day == today else f"{day} {clock}"


def _transition(config: ConfigOption, alert_id: str, target: str, by: str | None) -> None:
    from alerts.store import AlertNotFound, IllegalTransition
    from schemas.alert import AlertState

    _, store = store_or_exit(config)
    try:
        alert = store.transition(alert_id, AlertState(target), by or getpass.getuser())
    except (AlertNotFound, IllegalTransition) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    console.print(f"{alert.alert_id}: [bold]{alert.state.value}[/] by {by or getpass.getuser()}")


@app.command()
def ack(alert_id: str, config: ConfigOption = None, by: ByOption = "") -> None:
    """Acknowledge an open alert."""
    _transition(config, alert_id, "acknowledged", by or None)


@app.command()
def resolve(alert_id: str, config: ConfigOption = None, by: ByOption = "") -> None:
    """Resolve an open or acknowledged alert."""
    _transition(config, alert_id, "resolved", by or None)


@app.command()
def verdict(
    alert_id: str,
    config: ConfigOption = None,
    confirmed: Annotated[bool, typer.Option("--confirmed", help="The alert was right: the part is defective.")] = False,
    false_alarm: Annotated[bool, typer.Option("--false-alarm", help="The part is good: the alert was wrong.")] = False,
    defect: Annotated[Optional[str], typer.Option(
        "--defect", help="With --confirmed: the defect seen, when it is not the one alerted (may be a new one).")] = None,
    by: ByOption = "",
) -> None:
    """Record whether an alert was right: --confirmed (optionally --defect TYPE) or --false-alarm."""
    from pydantic import ValidationError

    from alerts.store import AlertNotFound

    if confirmed == false_alarm:
        typer.secho("give exactly one of --confirmed and --false-alarm", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if defect is not None and false_alarm:
        typer.secho("--defect goes with --confirmed: a false alarm names no defect", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    _, store = store_or_exit(config)
    who = by or getpass.getuser()
    try:
        given = store.record_verdict(alert_id, confirmed, who, defect)
    except AlertNotFound as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "verdict"
        typer.secho(f"verdict refused: {where}: {first['msg']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    defect_text = f" ({given.defect_type})" if given.defect_type else ""
    console.print(f"{alert_id}: [bold]{given.label}[/]{defect_text} by {who}", highlight=False)


@app.command("failed-webhooks")
def failed_webhooks(config: ConfigOption = None, count: int = 20) -> None:
    """Show webhook deliveries that failed for good (secrets in URLs masked)."""
    from schemas.redaction import redact

    _, store = store_or_exit(config)
    for entry in store.failed_deliveries(count):
        # masked again here: records written before masking moved into the store may hold a secret
        console.print(redact(f"{entry['id']} {entry['url']} alert {entry['alert_id']} after {entry['attempts']} "
                             f"attempts: {entry['error']}"), highlight=False, markup=False)


def dashboard(
    config: ConfigOption = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: dashboard.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: dashboard.port).")] = None,
) -> None:
    """Serve the live operator dashboard (open alerts, cameras, acknowledge/resolve)."""
    from alerts.dashboard import serve as serve_dashboard

    cfg = config_or_exit(config)
    console.print(f"dashboard on http://{host or cfg.dashboard.host}:{cfg.dashboard.port if port is None else port}/"
                  + (" (token required)" if cfg.dashboard.token else ""))
    serve_dashboard(cfg, host, port)


@app.command()
def drift(config: ConfigOption = None, line: LineOption = None) -> None:
    """Show score drift (docs/drift.md): each camera's window per question against the calibration reference.

    Exits 3 when some question has drifted, so a script or a cron check can act on it.
    """
    from rich.table import Table

    from alerts.drift import DriftKeys, read_drift

    cfg, store = store_or_exit(config)
    keys = DriftKeys(cfg.alerts.key_prefix)
    table = Table()
    for name in ("line/camera", "question", "PSI", "above threshold", "reference", "window", "state"):
        table.add_column(name, overflow="fold")
    drifted = 0
    for line_id in line or sorted(set(store.lines()) | {c.id for c in cfg.lines}):
        found = read_drift(store.redis, keys, line_id, recent=0)
        for key, s in sorted(found["status"].items()):
            camera, _, question = key.partition("/")
            raised = found["active"].get(key)
            drifted += raised is not None
            state = f"[red]drifted[/]: {'; '.join(raised['reasons'])}" if raised else (
                "filling" if "psi" not in s else "ok")
            table.add_row(f"{line_id}/{camera}", question, f"{s['psi']:.3f}" if "psi" in s else "-",
                          f"{s['above_threshold_rate']:.1%}" if "psi" in s else "-",
                          f"{s['reference_above_threshold_rate']:.1%}", f"{s['window_frames']}/{s['window_size']}",
                          state)
    console.print(table)
    if drifted:
        raise typer.Exit(3)
