"""Whether kafka-python checks record CRCs in C.

kafka-python computes the CRC32C of every record batch it produces and fetches: with the
``crc32c`` package (a C extension, in requirements.txt) it costs next to nothing; without it,
kafka-python falls back to pure Python and one ingest process published 120 frames/s of 640x480
instead of 628 (BENCHMARKS.md, "Ingest"). The package is optional to kafka-python, so an
install that missed it runs, only slowly: services say so when they start.
"""

from __future__ import annotations

from typing import Any


def has_c_crc32c() -> bool:
    """True when kafka-python will use the ``crc32c`` C extension."""
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    return True


def warn_without_c_crc32c(log: Any) -> None:
    """Log a warning when record CRCs will be computed in pure Python."""
    if not has_c_crc32c():
        log.warning("the crc32c package cannot be imported: kafka-python checks every record's CRC in pure Python, "
                    "several times slower per frame; pip install crc32c (requirements.txt pins it)")
