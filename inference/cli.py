"""The inference worker's command: ``patchsight infer``.

``patchsight`` registers ``infer`` at its top level (``app.command("infer")(infer)``).
The bundle commands (``patchsight model ...``) live in ``training/cli.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def infer(
    config: Path = typer.Option(None, "--config", "-c", envvar="PATCHSIGHT_CONFIG",
                                help="YAML configuration file (env: PATCHSIGHT_CONFIG)."),
    worker_id: str = typer.Option(None, "--worker-id", help="Name in results and logs (default: host-pid)."),
) -> None:
    """Run one inference worker: frames topic -> model -> results topic, until SIGTERM/SIGINT.

    Start several (processes or machines) with the same inference.group_id to share
    the frames topic; they scale up to its partition count. Live or replay is per frame.
    """
    from inference.runner import ModelLoadError
    from inference.worker import WorkerError, serve
    from runtime.cli_options import config_or_exit, kafka_or_exit

    cfg = config_or_exit(config)
    try:
        with kafka_or_exit(cfg.kafka, "worker failed"):
            serve(cfg, worker_id)
    except ModelLoadError as exc:
        typer.secho(f"model error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except WorkerError as exc:
        typer.secho(f"worker failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
