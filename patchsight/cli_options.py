"""Options every ``patchsight`` command shares, and how a bad config is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas.config import PatchsightConfig, load_config
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
