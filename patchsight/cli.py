"""The ``patchsight`` command: one entry point, one sub-command per job.

The pipeline reads left to right: ``ingest`` / ``replay`` publish frames,
``infer`` scores them, ``alerts`` turns scores into defect events.
Heavy imports (torch, transformers) happen inside the commands that need
them, so ``patchsight --help`` stays instant.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from patchsight.cli_options import ConfigOption, config_or_exit
from patchsight.log import configure_logging

app = typer.Typer(
    name="patchsight",
    help="Streaming visual inspection: cameras -> Kafka -> frozen CLIP encoder + MLLM head -> alerts in Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
infra_app = typer.Typer(help="Local Kafka (KRaft) and Redis for development, tests and the demo.", no_args_is_help=True)
config_app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(config_app, name="config")

console = Console()


@app.callback()
def main(
    log_format: str = typer.Option("auto", "--log-format", help="json, console, or auto (console on a terminal)."),
    log_level: str = typer.Option("INFO", "--log-level", envvar="PATCHSIGHT_LOG_LEVEL", help="Log level."),
) -> None:
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
    from patchsight.topics import ensure_topics

    cfg = config_or_exit(config)
    try:
        kafka = infra.kafka_up(cfg.kafka)
        redis = infra.redis_up(cfg.redis)
        ensure_topics(cfg.kafka)
    except infra.InfraError as exc:
        typer.secho(f"infra up failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    _print_status([kafka, redis])
    console.print(f"KAFKA_BOOTSTRAP={cfg.kafka.bootstrap}  state: {infra.state_dir()}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop the Kafka broker and Redis server that `infra up` started (external ones are left alone)."""
    from patchsight import infra

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
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", markup=False)


def run() -> None:
    app(prog_name="patchsight")


if __name__ == "__main__":
    sys.exit(run())
