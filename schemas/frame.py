"""The frame message: one camera frame on the ``frames`` topic.

Wire format (see docs/wire-format.md), chosen so that any Kafka client can
publish a valid frame without a patchsight library:

* key: the camera id, UTF-8. Keying by camera keeps each camera's frames in
  order on one partition.
* value: the encoded image bytes (JPEG), unchanged: no base64, no envelope.
* headers (all UTF-8 strings): ``ps-schema``, ``ps-line``, ``ps-camera``,
  ``ps-seq``, ``ps-capture-ns``, ``ps-encoding``, ``ps-width``, ``ps-height``,
  ``ps-mode``, and ``ps-part-id`` where the camera or a PLC knows which part the frame
  shows (then the worker uses it instead of its own tracker).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import MalformedMessage, UnsupportedSchemaVersion

FRAME_SCHEMA_VERSION = 1
# Ids end up in Kafka keys, Redis keys and URLs: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]

# Bounds that reject absurd headers before anything allocates for them.
MAX_DIMENSION = 16384
MAX_HEADER_BYTES = 256

Headers = list[tuple[str, bytes]]


class FrameMode(str, Enum):
    """How the frame entered the system; decides the worker's staleness rule."""

    live = "live"  # from a camera: a stale frame is skipped
    replay = "replay"  # from a recording: every frame is inspected


class FrameEncoding(str, Enum):
    jpeg = "jpeg"


class FrameMessage(BaseModel):
    """A frame as published by ingest and read by the inference workers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = FRAME_SCHEMA_VERSION
    line_id: Id
    camera_id: Id
    seq: int = Field(ge=0, description="per-camera sequence number, from 0")
    capture_ns: int = Field(ge=0, description="capture time, Unix epoch nanoseconds")
    encoding: FrameEncoding = FrameEncoding.jpeg
    width: int = Field(gt=0, le=MAX_DIMENSION)
    height: int = Field(gt=0, le=MAX_DIMENSION)
    mode: FrameMode = FrameMode.live
    part_id: Id | None = Field(
        None, description="the part the frame shows, from the camera or a PLC (ps-part-id); unique per line"
    )
    payload: bytes = Field(repr=False, min_length=1)

    def to_record(self) -> tuple[bytes, bytes, Headers]:
        """Return ``(key, value, headers)`` for a Kafka producer."""
        headers = [
            ("ps-schema", str(self.schema_version).encode()),
            ("ps-line", self.line_id.encode()),
            ("ps-camera", self.camera_id.encode()),
            ("ps-seq", str(self.seq).encode()),
            ("ps-capture-ns", str(self.capture_ns).encode()),
            ("ps-encoding", self.encoding.value.encode()),
            ("ps-width", str(self.width).encode()),
            ("ps-height", str(self.height).encode()),
            ("ps-mode", self.mode.value.encode()),
        ]
        if self.part_id is not None:
            headers.append(("ps-part-id", self.part_id.encode()))
        return self.camera_id.encode(), self.payload, headers

    @classmethod
    def from_record(
        cls, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
    ) -> "FrameMessage":
        """Parse a Kafka record; raise a ``SchemaError`` subclass naming the problem."""
        found: dict[str, str] = {}
        for name, raw in headers or ():
            if not isinstance(name, str) or not name.startswith("ps-"):
                continue
            if raw is None or len(raw) > MAX_HEADER_BYTES:
                raise MalformedMessage("header missing a value or longer than 256 bytes", field=name)
            try:
                found[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedMessage("header is not UTF-8", field=name) from None

        version = found.get("ps-schema")
        if version is None:
            raise MalformedMessage("missing header", field="ps-schema")
        if version != str(FRAME_SCHEMA_VERSION):
            raise UnsupportedSchemaVersion(
                f"frame schema version {version!r}; this reader understands {FRAME_SCHEMA_VERSION}",
                field="ps-schema",
            )
        if not value:
            raise MalformedMessage("empty payload", field="value")

        def header(name: str) -> str:
            if name not in found:
                raise MalformedMessage("missing header", field=name)
            return found[name]

        def integer(name: str) -> int:
            text = header(name)
            # isdigit() alone accepts "²" and other digits int() refuses: ASCII digits only
            if not (text.isascii() and text.isdigit()):
                raise MalformedMessage(f"not a non-negative integer: {text[:32]!r}", field=name)
            return int(text)

        fields = {
            "schema_version": FRAME_SCHEMA_VERSION,
            "line_id": header("ps-line"),
            "camera_id": header("ps-camera"),
            "seq": integer("ps-seq"),
            "capture_ns": integer("ps-capture-ns"),
            "encoding": header("ps-encoding"),
            "width": integer("ps-width"),
            "height": integer("ps-height"),
            "mode": found.get("ps-mode", FrameMode.live.value),
            "part_id": found.get("ps-part-id"),
            "payload": value,
        }
        try:
            frame = cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first["loc"]) or "frame"
            raise MalformedMessage(first["msg"], field=name) from None
        if key is not None and key != frame.camera_id.encode():
            raise MalformedMessage("record key differs from ps-camera", field="key")
        return frame
