"""Recordings: one camera's frames on disk, with an index and optional ground truth.

A recording is a directory (see docs/recording-format.md)::

    REC/
      meta.json      # RecordingMeta: line, camera, fps, size, how it was made
      frames.bin     # the JPEG payloads, back to back
      index.jsonl    # one IndexEntry per frame: seq, capture_ns, offset, length, truth

Frames are appended to one file rather than written one file each, so a
recording of hours stays a handful of files and reads sequentially.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from runtime.log import get_logger
from schemas.frame import Id

RECORDING_FORMAT_VERSION = 1


class RecordingMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int = RECORDING_FORMAT_VERSION
    line_id: Id
    camera_id: Id
    fps: float = Field(gt=0)
    width: int
    height: int
    source: str = ""  # what produced it: "synth seed=3", "camera rtsp://...", "topic frames"
    created_ns: int = 0
    labelled: bool = False


class FrameTruth(BaseModel):
    """Ground truth of one frame; ``answers`` maps question ids to the correct yes/no."""

    model_config = ConfigDict(extra="allow")

    part_id: int | None = None  # which physical part is in view (None: belt is empty)
    part_type: str | None = None
    defects: list[str] = []  # defect types present, e.g. ["scratch", "label_left"]
    answers: dict[str, bool] = {}
    # where the part lies (x0, y0, x1, y1, frame pixels) when the recording says so (one exported from operator
    # feedback: the worker's tracker's box); a part view reads it there instead of tracking the part
    part_box: tuple[int, int, int, int] | None = None


class IndexEntry(BaseModel):
    seq: int = Field(ge=0)
    capture_ns: int = Field(ge=0)
    offset: int = Field(ge=0)
    length: int = Field(gt=0)
    truth: FrameTruth | None = None


class RecordingError(Exception):
    """A recording is missing, truncated or inconsistent."""


class RecordingWriter:
    """Append frames to a new recording. Use as a context manager."""

    def __init__(self, path: str | Path, meta: RecordingMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / "index.jsonl").exists():
            raise RecordingError(f"{self.path} already holds a recording")
        self._frames = open(self.path / "frames.bin", "wb")
        self._index = open(self.path / "index.jsonl", "w")
        self._offset = 0
        self.count = 0
        self._write_meta()

    def _write_meta(self) -> None:
        (self.path / "meta.json").write_text(self.meta.model_dump_json(indent=2) + "\n")

    def append(self, seq: int, capture_ns: int, jpeg: bytes, truth: FrameTruth | None = None) -> None:
        self._frames.write(jpeg)
        entry = IndexEntry(seq=seq, capture_ns=capture_ns, offset=self._offset, length=len(jpeg), truth=truth)
        self._index.write(entry.model_dump_json(exclude_none=True) + "\n")
        self._offset += len(jpeg)
        self.count += 1
        if truth is not None and not self.meta.labelled:
            self.meta.labelled = True
            self._write_meta()

    def close(self) -> None:
        if not self._frames.closed:
            # frames first: an index line never points past the end of frames.bin
            self._frames.close()
            self._index.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Recording:
    """Read a recording: its metadata, index and frames."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.meta = RecordingMeta.model_validate_json((self.path / "meta.json").read_text())
        except FileNotFoundError:
            raise RecordingError(f"{self.path} is not a recording (no meta.json)") from None
        except ValueError as exc:
            raise RecordingError(f"{self.path}/meta.json is invalid: {exc}") from None
        if self.meta.format_version != RECORDING_FORMAT_VERSION:
            raise RecordingError(
                f"{self.path}: recording format {self.meta.format_version}, this reader understands "
                f"{RECORDING_FORMAT_VERSION}"
            )
        self.entries: list[IndexEntry] = []
        size = (self.path / "frames.bin").stat().st_size if (self.path / "frames.bin").exists() else 0
        lines = (self.path / "index.jsonl").read_text().splitlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = IndexEntry.model_validate_json(line)
            except ValueError:
                if lineno == len(lines):
                    break  # a torn last line from an interrupted recorder: keep what is whole
                raise RecordingError(f"{self.path}/index.jsonl line {lineno} is invalid") from None
            if entry.offset + entry.length > size:
                # frames.bin was cut short; the rest of the index is unusable. Said aloud, since
                # a copy cut short by a full disk looks just like a short recording otherwise.
                unreadable = sum(1 for rest in lines[lineno - 1:] if rest.strip())
                get_logger("ingest.recording").warning(
                    "frames.bin ends early: the frames after it are unreadable", path=str(self.path),
                    readable=len(self.entries), unreadable=unreadable)
                break
            self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, entry: IndexEntry) -> bytes:
        with open(self.path / "frames.bin", "rb") as frames:
            frames.seek(entry.offset)
            return frames.read(entry.length)

    def frames(self) -> Iterator[tuple[IndexEntry, bytes]]:
        """Yield ``(entry, jpeg)`` in recording order, reading the data file once."""
        with open(self.path / "frames.bin", "rb") as frames:
            for entry in self.entries:
                frames.seek(entry.offset)
                yield entry, frames.read(entry.length)

    def truth(self) -> dict[int, FrameTruth]:
        return {e.seq: e.truth for e in self.entries if e.truth is not None}


def find_recordings(paths: list[Path] | list[str]) -> list[Path]:
    """Recording folders: each path is one, or a folder searched for them (in name order)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "meta.json").is_file():
            found.append(p)
        else:
            found += sorted(m.parent for m in p.rglob("meta.json"))
    if not found:
        raise RecordingError(f"no recordings under {', '.join(map(str, paths))}")
    return found
