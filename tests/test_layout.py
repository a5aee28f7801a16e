"""The dependency rule (README, "Dependency rule"), read from every module's imports with ``ast``.

    schemas  <-  runtime  <-  services (ingest, inference, alerts)      <-  patchsight (the top)
    schemas  <-  model    <-  inference, training;  ingest <- training

Every import counts, also the ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the first-party packages its modules may import (besides its own)
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "runtime": {"schemas"},
    "model": {"schemas"},
    "ingest": {"schemas", "runtime"},
    "alerts": {"schemas", "runtime"},
    "inference": {"schemas", "runtime", "model"},
    "training": {"schemas", "runtime", "model", "ingest"},
    "patchsight": {"schemas", "runtime", "model", "ingest", "alerts", "inference", "training"},
}
FIRST_PARTY = set(ALLOWED)
# model/ is the library a worker loads: the numeric stack and pydantic, nothing of the services
MODEL_THIRD_PARTY = {"torch", "transformers", "numpy", "cv2", "safetensors", "gguf", "tokenizers", "pydantic"}


def imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, wherever in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside its own package
                names.add(path.relative_to(ROOT).parts[0])
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_is_listed() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == FIRST_PARTY, "a new top-level package needs its place in the dependency rule"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_dependency_rule(package: str) -> None:
    wrong = {}
    for path in modules(package):
        bad = (imported(path) & FIRST_PARTY) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def test_the_model_library_imports_only_the_numeric_stack() -> None:
    wrong = {}
    for path in modules("model"):
        third_party = imported(path) - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}
        if third_party - MODEL_THIRD_PARTY:
            wrong[str(path.relative_to(ROOT))] = sorted(third_party - MODEL_THIRD_PARTY)
    assert not wrong, wrong


def test_importing_the_packages_themselves_loads_nothing_heavy() -> None:
    code = ("import sys, model, training, inference, runtime; "
            "print(sorted(m for m in ('torch', 'transformers', 'kafka', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
