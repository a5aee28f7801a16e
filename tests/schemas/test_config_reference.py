"""docs/configuration.md is generated from the models and must match them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == module.render(), "run: .venv/bin/python scripts/config_reference.py"
    assert "`max_delay_ms`" in committed and "`lines[]`" in committed
