"""Every command and path that README, docs/, BENCHMARKS.md, the Makefile and docker-compose.yml name exists.

For each ``patchsight ...`` they show: its sub-command path resolves and ``--help`` parses, every
option it uses is an option of that command, and, where it is written out to be run (a shell
block, a Makefile recipe, a compose ``command``) and holds no placeholder, the whole command line
parses. Parsing builds click's contexts the way ``patchsight`` would, without running anything.
Every repository path they name (bench/..., scripts/..., docs/..., a package's module) and every
relative Markdown link must exist.

typer vendors its own click, so the commands and errors are recognised by their interface.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml

from patchsight.cli import app

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
# a word that stands for something: ..., <a bundle>, [--opt X], a|b, N, NAME, REC..., $VAR, {a,b}
PLACEHOLDER = re.compile(r"^(\.\.\.|.*[<>\[\]|{}$].*|[A-Z][A-Z0-9_]*(\.\.\.)?)$")
# paths that commands write (outputs), not ones that must exist in the repository
OUTPUTS = {"bench/results/quick"}


@dataclass(frozen=True)
class Advertised:
    words: tuple[str, ...]  # what follows `patchsight`
    where: str  # file:line
    runnable: bool  # written out to be run (shell block, Makefile, compose), not a mention in prose

    def __str__(self) -> str:
        return f"{self.where}: patchsight {' '.join(self.words)}"


def _words_after_patchsight(line: str) -> list[str] | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words or Path(words[0]).name != "patchsight":
        return None
    return words[1:]


def _compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _patchsight_services() -> set[str]:
    return {name for name, spec in _compose_services().items() if str(spec.get("image", "")).startswith("patchsight")}


def _from_markdown(path: Path) -> list[Advertised]:
    found = []
    fenced = False
    lines = path.read_text().splitlines()
    services = _patchsight_services()
    for number, line in enumerate(lines, 1):
        where = f"{path.relative_to(ROOT)}:{number}"
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if "->" in line:  # a diagram, not a command
                continue
            while line.endswith("\\") and number < len(lines):
                line = line[:-1] + " " + lines[number].strip()
                number += 1
            words = _words_after_patchsight(line.strip())
            if words is not None:
                found.append(Advertised(tuple(words), where, runnable=True))
            continue
        for span in re.findall(r"`([^`]+)`", line):
            words = _words_after_patchsight(span)
            compose_run = re.match(r"docker compose run --rm (\S+) (.*)", span)
            if words is not None:
                found.append(Advertised(tuple(words), where, runnable=False))
            elif compose_run and compose_run.group(1) in services:
                found.append(Advertised(tuple(shlex.split(compose_run.group(2))), where, runnable=True))
    return found


def _from_makefile() -> list[Advertised]:
    found = []
    for number, line in enumerate((ROOT / "Makefile").read_text().splitlines(), 1):
        match = re.search(r"\$\(BIN\)/patchsight (.*)", line)
        if match:
            found.append(Advertised(tuple(shlex.split(match.group(1))), f"Makefile:{number}", runnable=True))
    return found


def _from_compose() -> list[Advertised]:
    services = _compose_services()
    return [Advertised(tuple(services[name]["command"]), f"docker-compose.yml: services.{name}.command", runnable=True)
            for name in sorted(_patchsight_services()) if "command" in services[name]]


def advertised() -> list[Advertised]:
    found = [a for path in MARKDOWN for a in _from_markdown(path)] + _from_makefile() + _from_compose()
    return list({(a.words, a.runnable): a for a in found}.values())


ROOT_COMMAND = typer.main.get_command(app)


def is_group(command: object) -> bool:
    return hasattr(command, "commands") and hasattr(command, "resolve_command")


class Shown(Exception):
    """``parse`` met --help (or another eager option) and would have exited with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Refused(Exception):
    """The command line does not parse; the message is click's."""


def parse(words: list[str]) -> None:
    """Build every context of ``patchsight WORDS`` as click would before running it, without running it.

    Raises ``Refused`` for a usage error and ``Shown`` where click would exit early (--help).
    """
    try:
        _contexts(words)
    except Exception as exc:
        if type(exc).__name__ == "Exit":
            raise Shown(exc.exit_code) from None
        if hasattr(exc, "format_message"):
            raise Refused(exc.format_message()) from None
        raise


def _contexts(words: list[str]) -> None:
    command = ROOT_COMMAND
    ctx = command.make_context("patchsight", list(words))
    while is_group(command):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


def command_path(words: tuple[str, ...]) -> tuple[list[str], list]:
    """The sub-command words at the start of ``words`` and the commands they name, root first."""
    path, chain = [], [ROOT_COMMAND]
    for word in words:
        group = chain[-1]
        if not is_group(group) or word not in group.commands:
            break
        path.append(word)
        chain.append(group.commands[word])
    return path, chain


def options_of(chain: list) -> set[str]:
    return {opt for command in chain for param in command.params if param.param_type_name == "option"
            for opt in (*param.opts, *param.secondary_opts)} | {"--help"}


ADVERTISED = advertised()


def test_the_sources_advertise_the_commands_a_user_runs() -> None:
    heads = {" ".join(command_path(a.words)[0]) for a in ADVERTISED}
    assert {"demo", "infer", "ingest", "alerts serve", "dashboard", "infra up", "infra down", "model finetune",
            "synth", "replay"} <= heads, heads
    assert any(a.where.startswith("docker-compose.yml") for a in ADVERTISED)
    assert any(a.where.startswith("Makefile") for a in ADVERTISED)


def _id(command: Advertised) -> str:
    return f"{command.where} {' '.join(command_path(command.words)[0]) or 'patchsight'}"


@pytest.mark.parametrize("command", ADVERTISED, ids=_id)
def test_an_advertised_command_exists_and_parses(command: Advertised, capsys: pytest.CaptureFixture[str]) -> None:
    path, chain = command_path(command.words)
    first = command.words[0] if command.words else ""
    assert path or not first or first.startswith("-"), f"{command}: no command {first!r}"
    with pytest.raises(Shown) as shown:
        parse([*path, "--help"])
    assert shown.value.code == 0 and "Usage" in capsys.readouterr().out
    known = options_of(chain)
    used = {w.strip("[]").split("=", 1)[0] for w in command.words[len(path):] if w.strip("[").startswith("-")}
    assert used <= known, f"{command}: no option {sorted(used - known)} (it has {sorted(known)})"
    if command.runnable and not any(PLACEHOLDER.match(w) for w in command.words):
        try:
            parse(list(command.words))
        except Shown as done:  # --help and the like
            assert done.code == 0
        except Refused as exc:
            # an example's input that the commands before it create (record writes what label reads)
            if not re.search(r"'[^']+' does not exist", str(exc)):
                pytest.fail(f"{command}: {exc}")


def test_infra_down_takes_a_config_file_as_infra_up_does() -> None:
    parse(["infra", "up", "-c", "config/demo.yaml"])
    parse(["infra", "down", "-c", "config/demo.yaml"])


def test_a_wrong_command_line_is_caught() -> None:
    with pytest.raises(Refused, match="run"):
        parse(["ingest", "run"])  # what docker-compose.yml once ran: the container restarted in a loop
    assert command_path(("model", "no-such-command"))[0] == ["model"]


PREFIXES = r"(?:bench|scripts|docs|config|infra|tests|ingest|inference|alerts|schemas|patchsight|runtime|model|training" \
           r"|models/default)"
PATH = re.compile(r"(?<![\w./-])(" + PREFIXES + r"/(?:[\w./-]|\{[\w.,-]+\})*[\w/}])")


def expand_braces(path: str) -> list[str]:
    """``a_{b,c}.json`` -> ``a_b.json``, ``a_c.json`` (the shell's brace expansion, one level)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [p for part in match.group(1).split(",")
            for p in expand_braces(path[: match.start()] + part + path[match.end():])]


def named_paths() -> list[tuple[str, str]]:
    found = []
    for source in [*MARKDOWN, ROOT / "Makefile", ROOT / "docker-compose.yml", ROOT / "Dockerfile"]:
        text = source.read_text()
        for match in PATH.finditer(text):
            found += [(p.rstrip("/"), f"{source.relative_to(ROOT)}") for p in expand_braces(match.group(1))]
        if source.suffix == ".md":
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if not re.match(r"[a-z]+:|#", target):
                    found.append((str((source.parent / target.split("#")[0]).resolve().relative_to(ROOT)),
                                  f"{source.relative_to(ROOT)} (link)"))
    return sorted(set(found))


def test_every_named_path_exists() -> None:
    paths = named_paths()
    assert any(p == "bench/run_all.py" for p, _ in paths)  # the Makefile's bench target
    missing = [f"{source}: {path}" for path, source in paths
               if path not in OUTPUTS and not (ROOT / path).exists()]
    assert not missing, missing
