"""Options every ``patchsight`` command shares, and how a bad config is reported."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas.config import KafkaSettings, PatchsightConfig, load_config
from schemas.errors import ConfigError

ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        envvar="PATCHSIGHT_CONFIG",
        help="YAML configuration file (env: PATCHSIGHT_CONFIG). Without one, built-in defaults apply.",
        show_default=False,
    ),
]


def config_or_exit(path: Optional[Path]) -> PatchsightConfig:
    """Load and validate the configuration, or print what is wrong and exit with status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.secho(f"configuration error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@contextmanager
def kafka_or_exit(kafka: KafkaSettings, what: str) -> Iterator[None]:
    """A Kafka error that reaches the command becomes one line and exit status 1.

    Mostly a broker that is not there when the command starts. A broker lost while the
    services run is ridden out inside them (docs/reliability.md); at start, the supervisor's
    restart (compose's ``restart: unless-stopped``) is the retry.
    """
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        typer.secho(f"{what}: kafka at {kafka.bootstrap}: {exc} (is the broker running? `patchsight infra status`)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
