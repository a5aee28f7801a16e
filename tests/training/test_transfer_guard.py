"""The fabric family measures transfer: it must never feed the shipped encoder's pretraining or its head's training.

The rule (docs/synth.md, "Fabric: a product the encoder never saw"): pretraining renders the part
family of ``ingest.synth`` only; the fabric renderer is reachable from ``patchsight synth
--product fabric`` alone; the script that makes the shipped bundle renders parts only; and the
shipped bundle's provenance names no fabric recording. Each check below fails when one is broken.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from ingest import fabric, synth

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_synth_command_reaches_the_fabric_renderer():
    users = sorted(str(p.relative_to(ROOT)) for package in ("ingest", "model", "training", "inference", "patchsight")
                   for p in (ROOT / package).rglob("*.py")
                   if any(name == "ingest.fabric" or name.startswith("ingest.fabric.") for name in imports_of(p)))
    assert users == ["ingest/synth_cli.py"]


def test_pretraining_draws_from_the_part_family_only():
    from training import pretrain

    # pretraining renders synth.sample_part over PART_TYPES; no fabric kind may hide among them
    assert not set(synth.PART_TYPES) & set(fabric.FABRIC_KINDS)
    assert not {t for kinds in synth.LINE_PART_TYPES.values() for t in kinds} & set(fabric.FABRIC_KINDS)
    source = Path(pretrain.__file__).read_text()
    assert "fabric" not in source and "synth.PART_TYPES" in source


def test_the_shipped_bundle_script_renders_parts_only():
    script = (ROOT / "scripts" / "train-default-bundle.sh").read_text()
    calls = [line for line in script.splitlines() if re.search(r"\bsynth\b", line) and "patchsight" in line]
    assert calls, "the script no longer renders its data with patchsight synth: update this guard"
    assert all("--product" not in line and "fabric" not in line for line in calls), calls


def test_the_shipped_bundle_was_trained_on_no_fabric_recording():
    spec = json.loads((ROOT / "models" / "default" / "bundle.json").read_text())
    provenance = json.dumps(spec["provenance"])
    sources = re.findall(r'"(synth [^"]*)"', provenance)
    assert len(sources) > 100  # the rounds' recordings are listed: this check reads what the bundle saw
    assert all(s.startswith("synth seed=") for s in sources), {s for s in sources if not s.startswith("synth seed=")}
    assert f"synth {fabric.PRODUCT}" not in provenance and '"product": "fabric"' not in provenance
