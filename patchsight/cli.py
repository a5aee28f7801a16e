"""The ``patchsight`` command: one entry point, one sub-command per job.

The pipeline reads left to right: ``ingest`` / ``replay`` publish frames,
``infer`` scores them, ``alerts`` turns scores into defect events.
Heavy imports (torch, transformers) happen inside the commands that need
them, so ``patchsight --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alerts import cli as alerts_cli
from inference import cli as inference_cli
from ingest import cli as ingest_cli
from ingest import synth_cli
from patchsight.infra import InfraError
from runtime.cli_options import ConfigOption, config_or_exit
from runtime.log import configure_logging
from schemas.config import PatchsightConfig
from schemas.errors import ConfigError
from schemas.redaction import redact
from training import cli as training_cli

app = typer.Typer(
    name="patchsight",
    help="Streaming visual inspection: cameras -> Kafka -> frozen CLIP encoder + MLLM head -> alerts in Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
infra_app = typer.Typer(help="Local Kafka (KRaft) and Redis for development, tests and the demo.", no_args_is_help=True)
config_app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)
feedback_app = typer.Typer(help="What operators said of alerts and sampled parts, as training data.",
                           no_args_is_help=True)
# Listed in pipeline order: set-up, cameras, inference, alerts.
app.add_typer(infra_app, name="infra")
app.add_typer(config_app, name="config")
app.command("synth")(synth_cli.synth)
app.command("ingest", help="Run the configured cameras, one process each, publishing frames to Kafka.")(ingest_cli.run)
app.command("record")(ingest_cli.record)
app.command("replay")(ingest_cli.replay)
app.command("label")(ingest_cli.label)
app.command("infer")(inference_cli.infer)
app.add_typer(training_cli.model_app, name="model")
app.add_typer(alerts_cli.app, name="alerts")
app.command("dashboard")(alerts_cli.dashboard)
app.add_typer(feedback_app, name="feedback")

console = Console()


@app.callback()
def main(
    log_format: str = typer.Option("auto", "--log-format", help="json, console, or auto (console on a terminal)."),
    log_level: str = typer.Option("INFO", "--log-level", envvar="PATCHSIGHT_LOG_LEVEL", help="Log level."),
) -> None:
    # Child processes (cameras, demo services) inherit the choice through the environment.
    if log_format != "auto":
        os.environ["PATCHSIGHT_LOG_FORMAT"] = log_format
    os.environ["PATCHSIGHT_LOG_LEVEL"] = log_level
    configure_logging(log_format, log_level)  # type: ignore[arg-type]


def _print_status(rows: list) -> None:
    table = Table("service", "state", "address", "pid", "detail")
    for s in rows:
        colour = {"running": "green", "external": "cyan", "stopped": "red"}[s.state]
        table.add_row(s.name, f"[{colour}]{s.state}[/]", s.address, str(s.pid or "-"), s.detail)
    console.print(table)


@infra_app.command("up")
def infra_up(config: ConfigOption = None) -> None:
    """Start Kafka and Redis locally, or use the ones configured if they answer."""
    from patchsight import infra
    from runtime.topics import ensure_topics

    from kafka.errors import KafkaError

    cfg = config_or_exit(config)
    try:
        kafka = infra.kafka_up(cfg.kafka)
        redis = infra.redis_up(cfg.redis)
        ensure_topics(infra.kafka_client_settings(cfg.kafka))
    except infra.InfraError as exc:
        typer.secho(f"infra up failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KafkaError as exc:
        reason = redact(f"{type(exc).__name__}: {exc}")
        typer.secho(f"infra up failed creating topics: {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    _print_status([kafka, redis])
    console.print(f"KAFKA_BOOTSTRAP={cfg.kafka.bootstrap}  state: {infra.state_dir()}")
    _print_ca_hints(cfg)


def _print_ca_hints(cfg: PatchsightConfig) -> None:
    """Tell the user which CA file clients of a local TLS server must trust, when the config lacks it."""
    from patchsight import infra

    ca = infra.local_tls().ca_file if (infra.state_dir() / "tls").exists() else None
    if ca is None:
        return
    if cfg.kafka.security.protocol.endswith("SSL") and cfg.kafka.security.ssl_cafile is None:
        typer.echo(f"PATCHSIGHT__KAFKA__SECURITY__SSL_CAFILE={ca}")
    if cfg.redis.url.startswith("rediss://") and cfg.redis.ssl_cafile is None:
        typer.echo(f"PATCHSIGHT__REDIS__SSL_CAFILE={ca}")


@infra_app.command("certs")
def infra_certs() -> None:
    """Create (once) the local CA and server certificate for TLS listeners, and print where they are."""
    from patchsight import infra

    try:
        tls = infra.local_tls()
    except infra.InfraError as exc:
        typer.secho(f"infra certs failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"CA (clients trust this): {tls.ca_file}")
    typer.echo(f"server certificate: {tls.server_cert}  key: {tls.server_key}")
    # plain echo: rich would wrap long paths, and these lines are meant to be pasted
    typer.echo(f"PATCHSIGHT__KAFKA__SECURITY__SSL_CAFILE={tls.ca_file}")
    typer.echo(f"PATCHSIGHT__REDIS__SSL_CAFILE={tls.ca_file}")


@infra_app.command("down")
def infra_down(config: ConfigOption = None) -> None:
    """Stop the Kafka broker and Redis server that `infra up` started (external ones are left alone).

    What runs is recorded in the state folder, so the config only has to be valid: -c is taken
    as `infra up` takes it.
    """
    from patchsight import infra

    config_or_exit(config)
    stopped = [name for name, stop in (("kafka", infra.kafka_down), ("redis", infra.redis_down)) if stop()]
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@infra_app.command("status")
def infra_status(config: ConfigOption = None) -> None:
    """Show whether Kafka and Redis answer, and whether patchsight started them. Exit 1 if either is down."""
    from patchsight import infra

    cfg = config_or_exit(config)
    rows = [infra.kafka_status(cfg.kafka), infra.redis_status(cfg.redis)]
    _print_status(rows)
    if any(r.state == "stopped" for r in rows):
        raise typer.Exit(1)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration file and environment overrides; exit 2 naming the bad field."""
    cfg = config_or_exit(config)
    cams = sum(len(line.cameras) for line in cfg.lines)
    console.print(f"[green]ok[/]: {len(cfg.lines)} lines, {cams} cameras, kafka {cfg.kafka.bootstrap}")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (secrets masked) as YAML."""
    import yaml

    cfg = config_or_exit(config)
    # SecretStr fields dump as ********; URLs (redis.url, camera sources) may carry user:password@
    shown = _redact_tree(cfg.model_dump(mode="json"))
    console.print(yaml.safe_dump(shown, sort_keys=False), end="", markup=False)


def _redact_tree(node: object) -> object:
    if isinstance(node, dict):
        return {k: _redact_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_tree(v) for v in node]
    return redact(node) if isinstance(node, str) else node


@app.command("demo")
def demo(
    config: Path = typer.Option(Path("config/demo.yaml"), "--config", "-c", help="Lines, cameras and questions."),
    frames: int = typer.Option(300, help="Frames per camera in the synthetic recordings (10 fps)."),
    seed: int = typer.Option(1000, help="Synthetic line seed; 1000+ were never used for training."),
    speed: float = typer.Option(
        0.25,
        help="Replay pace: 1 = the recordings' 10 fps per camera (60 frames/s in all, which 2 idle CPU cores "
        "just carry), 0.25 = 15 frames/s, 0 = as fast as possible.",
    ),
    workers: int = typer.Option(2, min=1, help="Inference worker processes."),
    dashboard_port: int = typer.Option(8080, help="Dashboard port (a free one is used if taken)."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the stack up after the summary."),
) -> None:
    """Run the whole pipeline on 3 synthetic lines x 2 cameras and score the alerts against ground truth."""
    from patchsight.demo import DemoOptions, run_demo

    options = DemoOptions(config=config, frames_per_camera=frames, seed=seed, speed=speed, workers=workers,
                          dashboard_port=dashboard_port, keep_running=keep_running)
    try:
        code = run_demo(options)
    except (ConfigError, InfraError) as exc:
        typer.secho(f"demo failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    raise typer.Exit(code)


@feedback_app.command("export")
def feedback_export(
    line: str = typer.Option(..., "--line", "-l", help="The line whose verdicts to export (a line of the config)."),
    out: Path = typer.Option(..., "--out", help="Folder for the recordings, one per camera (must not hold one)."),
    config: ConfigOption = None,
) -> None:
    """Write a line's judged alerts and reviewed parts, with their evidence frames, as labelled recordings.

    `patchsight model calibrate BUNDLE --data OUT` (and finetune) take them like any recording (docs/feedback.md).
    """
    from ingest.recording import RecordingError
    from patchsight.feedback import export_feedback

    cfg, store = alerts_cli.store_or_exit(config)
    chosen = cfg.line(line)
    if chosen is None:
        known = ", ".join(entry.id for entry in cfg.lines) or "none"
        typer.secho(f"no line {line!r} in the configuration (its lines: {known})", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        done = export_feedback(store, chosen, out)
    except RecordingError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    console.print(f"{done.parts['good']} good and {done.parts['defective']} defective parts, {done.frames} frames"
                  + (f"; left out: {done.skipped_unasked} naming a defect no question asks about"
                     if done.skipped_unasked else "")
                  + (f", {done.skipped_no_evidence} without kept frames" if done.skipped_no_evidence else ""),
                  highlight=False)
    for camera, path in sorted(done.recordings.items()):
        console.print(f"  {camera}: {path}", highlight=False)
    if not done.frames:
        typer.secho(f"nothing to export: no verdict on line {line!r} has kept evidence frames", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(1)


def run() -> None:
    app(prog_name="patchsight")


if __name__ == "__main__":
    sys.exit(run())

