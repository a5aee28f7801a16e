"""Output folders of the training commands: checked before the slow part, filled only when the command succeeds.

A command writes into a temporary folder beside its ``--out`` and moves what it wrote into place
at the end, so a run that fails (or is refused) leaves ``--out`` as it was: no empty folder, no
half-written bundle or report. Files already in ``--out`` that the command does not write are kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_writable(out: str | Path) -> None:
    """Raise ``ValueError`` now if ``out`` could not be made a folder and written, without creating anything."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be made: {existing} is not writable")


@contextmanager
def filled_on_success(out: str | Path) -> Iterator[Path]:
    """A temporary folder to write ``out``'s files into; moved into ``out`` if the block succeeds, removed if not."""
    out = Path(out)
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".partial", dir=out.parent))
    try:
        yield staging
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    """Move ``source``'s contents into ``target``, replacing files of the same name and keeping the others."""
    if not target.exists():
        source.rename(target)
        return
    for item in source.iterdir():
        dest = target / item.name
        if item.is_dir() and dest.is_dir():
            _move_into(item, dest)
        else:
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(item, dest)
