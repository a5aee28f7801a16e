"""Services warn at start when kafka-python would compute record CRCs in pure Python."""

from __future__ import annotations

import sys

import pytest

from runtime.kafka_crc import has_c_crc32c, warn_without_c_crc32c


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str, **_: object) -> None:
        self.warnings.append(event)


def test_the_pinned_crc32c_is_found_and_nothing_is_said() -> None:
    log = Recorder()
    warn_without_c_crc32c(log)
    assert has_c_crc32c() and log.warnings == []


def test_without_crc32c_the_start_warns_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "crc32c", None)  # import crc32c now raises ImportError
    log = Recorder()
    warn_without_c_crc32c(log)
    assert not has_c_crc32c()
    assert len(log.warnings) == 1 and "pip install crc32c" in log.warnings[0]
