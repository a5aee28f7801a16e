"""The configuration contract: one YAML file shared by every service.

``load_config(path)`` reads the file, applies environment overrides and
validates the result. Overrides use ``PATCHSIGHT__SECTION__FIELD=value``
(double underscores separate levels; values are parsed as YAML scalars), plus
the conventional ``KAFKA_BOOTSTRAP`` and ``REDIS_URL``. Errors name the field.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator,
)

from schemas.errors import ConfigError
from schemas.frame import Id
from schemas.redaction import redact

ENV_PREFIX = "PATCHSIGHT__"
_HTTP_URL = TypeAdapter(AnyHttpUrl)


class Section(BaseModel):
    # Unknown keys are almost always typos; refusing them beats ignoring them.
    model_config = ConfigDict(extra="forbid")


# --- Kafka -----------------------------------------------------------------


class KafkaSecurity(Section):
    """TLS and SASL for every Kafka client of the project (producer, consumers, admin)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="with SASL_*; PLAIN when unset"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="client certificate, for mutual TLS")
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> "KafkaSecurity":
        if self.protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.protocol} needs sasl_username and sasl_password")
        return self


class Topics(Section):
    """Topic names; patchsight creates missing ones at start."""

    frames: str = Field("frames", description="frame messages from ingest, keyed by camera")
    results: str = Field("results", description="one inspection result per frame, keyed by camera")
    dead_letter: str = Field("frames.dlq", description="frames a worker could not process, with the reason")
    partitions: int = Field(6, ge=1, description="partitions when patchsight creates a topic")


class KafkaSettings(Section):
    """Where the Kafka cluster is and how to reach it."""

    bootstrap: str = Field("127.0.0.1:9092", description="comma-separated host:port list (env KAFKA_BOOTSTRAP)")
    topics: Topics = Topics()
    security: KafkaSecurity = KafkaSecurity()
    client_id_prefix: str = Field("patchsight", description="prefix of Kafka client ids, for broker-side metrics")

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings for any kafka-python client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",") if s.strip()],
            "security_protocol": self.security.protocol,
        }
        sec = self.security
        if sec.protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = sec.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = sec.sasl_username
            kwargs["sasl_plain_password"] = sec.sasl_password.get_secret_value() if sec.sasl_password else None
        if sec.protocol.endswith("SSL"):
            kwargs["ssl_cafile"] = str(sec.ssl_cafile) if sec.ssl_cafile else None
            kwargs["ssl_certfile"] = str(sec.ssl_certfile) if sec.ssl_certfile else None
            kwargs["ssl_keyfile"] = str(sec.ssl_keyfile) if sec.ssl_keyfile else None
            kwargs["ssl_check_hostname"] = sec.ssl_check_hostname
        return kwargs


class RedisSettings(Section):
    """The Redis that stores alerts, debounce state and camera health."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS) URL (env REDIS_URL)")
    username: str | None = Field(None, description="ACL user")
    password: SecretStr | None = Field(None, description="password of the ACL user or requirepass")
    ssl_cafile: Path | None = Field(None, description="with rediss://: CA bundle that signed the server's certificate")

    @model_validator(mode="after")
    def _user_has_password(self) -> "RedisSettings":
        if self.username and not self.password:
            raise ValueError("an ACL username needs a password")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``redis.Redis.from_url(url, **kwargs)`` besides the URL."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password.get_secret_value()
        # redis:// connections take no TLS arguments at all, so the CA only goes with rediss://
        if self.ssl_cafile and self.url.startswith("rediss://"):
            kwargs["ssl_ca_certs"] = str(self.ssl_cafile)
        return kwargs


# --- Lines, cameras, questions ------------------------------------------------


class QuestionCategory(str, Enum):
    fine_detail = "fine_detail"
    spatial = "spatial"
    counting = "counting"
    relation = "relation"  # relations between two features, never stated by captions


class Question(Section):
    """A yes/no question asked of every frame of a line; "yes" means defect."""

    id: Id
    text: str = Field(min_length=3)
    defect_type: str
    kind: Literal["yes_no", "anomaly"] = Field(
        "yes_no", description="yes_no: the head answers the question; anomaly: the bundle's memory of good parts "
        "scores how unlike them the frame is (`patchsight model fit-anomaly`), for lines with good parts only")
    category: QuestionCategory = QuestionCategory.fine_detail
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="overrides the bundle's threshold")
    # CLIP baseline prompts; defaults are derived from the question when absent.
    clip_positive: str | None = None
    clip_negative: str | None = None

    def threshold_over(self, sent: float) -> float:
        """The threshold the alert service decides by: this line's, where set, over the one the worker sent."""
        return self.threshold if self.threshold is not None else sent


class CameraSource(Section):
    """Where a camera's frames come from: exactly one of url, device, video, images."""

    url: str | None = Field(None, description="rtsp:// or http(s):// stream; reconnected with backoff when lost")
    device: int | None = Field(None, ge=0, description="local capture device index (/dev/videoN)")
    video: Path | None = Field(
        None, description="video file, played from the start again when it ends, like a live camera "
        "(to inspect it once: `patchsight record --frames N` it, then `replay` the recording)")
    images: Path | None = Field(None, description="folder of images, read in name order and again from the first")

    @model_validator(mode="after")
    def _exactly_one(self) -> "CameraSource":
        given = [n for n in ("url", "device", "video", "images") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of url, device, video, images (got {given or 'none'})")
        return self

    def describe(self) -> str:
        """A log-safe description: secrets in URLs are masked (``schemas.redaction``)."""
        if self.url is not None:
            return redact(self.url)
        if self.device is not None:
            return f"device:{self.device}"
        return str(self.video or self.images)


class InspectionZone(Section):
    """Where a camera's parts are inspected, in pixels of its frames as published (after ``resize``).

    A part is inspected while it lies wholly inside the zone. Unset: the central square of
    the frame, which is what a CLIP encoder reads of a whole frame.
    """

    x0: int = Field(ge=0)
    y0: int = Field(ge=0)
    x1: int = Field(gt=0)
    y1: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "InspectionZone":
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"zone ({self.x0}, {self.y0}, {self.x1}, {self.y1}) needs x0 < x1 and y0 < y1")
        return self


class CameraConfig(Section):
    """One camera of a line."""

    id: Id
    source: CameraSource | None = Field(None, description="absent for cameras fed only by replays")
    fps: float = Field(10.0, gt=0, le=240, description="capture rate")
    jpeg_quality: int = Field(85, ge=10, le=100)
    resize: tuple[int, int] | None = Field(None, description="(width, height) before encoding")
    zone: InspectionZone | None = Field(None, description="inspection zone; unset: the frame's central square")
    track_parts: bool = Field(
        True, description="decide once per part (tracked in the zone, or named by a ps-part-id header); "
        "false: judge every frame on its own with the k-of-n debounce")


class AlertPolicy(Section):
    """How results become alerts: once per part, or (cameras without part tracking) k-of-n over frames."""

    max_false_alarm_rate: float = Field(
        0.02, ge=0.0, le=1.0, description="share of good parts that may be flagged; `model calibrate` "
        "chooses the questions' part thresholds together to stay within it")
    part_timeout_s: float = Field(
        10.0, gt=0, description="a part is decided when it leaves the zone, or when its camera sends nothing "
        "for this long")

    k: int = Field(3, ge=1, description="alert when k of the last n frames are above threshold")
    n: int = Field(5, ge=1)
    # After an alert, the same camera/question stays quiet until this many
    # consecutive frames are below threshold: one part passing makes one alert.
    clear_frames: int = Field(5, ge=1, description="frames below threshold that end a defect")
    cooldown_s: float = Field(0.0, ge=0.0, description="extra quiet time after the defect clears")

    @model_validator(mode="after")
    def _k_le_n(self) -> "AlertPolicy":
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class LineConfig(Section):
    """A production line: its cameras, the questions asked of every frame, and the alert policy."""

    id: Id
    description: str = ""
    cameras: list[CameraConfig] = Field(min_length=1)
    questions: list[Question] = Field(min_length=1)
    alert_policy: AlertPolicy = AlertPolicy()

    @model_validator(mode="after")
    def _unique_ids(self) -> "LineConfig":
        for what, ids in (("camera", [c.id for c in self.cameras]), ("question", [q.id for q in self.questions])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} ids: {dupes}")
        return self


# --- Services -----------------------------------------------------------------


class IngestSettings(Section):
    """Camera processes and the frame producer."""

    buffer_frames: int = Field(32, ge=1, description="bounded buffer between capture and producer")
    max_message_bytes: int = Field(1_000_000, ge=10_000, description="the broker's message.max.bytes")
    oversize: Literal["downscale", "reject"] = "downscale"
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    reconnect_give_up_s: float = Field(300.0, gt=0, description="report a camera dead after this long")
    linger_ms: int = Field(5, ge=0, description="producer batching delay")
    producer_stall_s: float = Field(
        30.0, gt=0, description="a live camera replaces a producer that acknowledges nothing for this long"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus port of `patchsight ingest`; 0 picks a free port, unset: off"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="listen address of /metrics; 0.0.0.0 lets Prometheus elsewhere scrape it"
    )


class ModelSettings(Section):
    """Which model bundle the inference workers load."""

    bundle: Path = Field(Path("models/default"), description="model bundle directory (see `patchsight model info`)")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto picks CUDA when present")


GpuJpegDecode = Literal["auto", "off"]


class InferenceSettings(Section):
    """Inference workers: consumer group, dynamic batching, staleness."""

    group_id: str = Field("patchsight-inference", description="consumer group shared by all workers")
    max_batch: int = Field(8, ge=1, description="a batch closes at this many frames ...")
    max_delay_ms: float = Field(20.0, ge=0, description="... or when its oldest frame has waited this long")
    max_frame_age_s: float = Field(5.0, gt=0, description="live frames older than this are skipped")
    decode_threads: int = Field(
        0, ge=0, description="JPEG decoding threads, overlapping model work; 0 = one per core (os.cpu_count())"
    )
    reduced_decode: bool = Field(
        True, description="decode a JPEG at 1/2, 1/4 or 1/8 size when the encoder reads no more (640x480 -> 320x240 "
        "for a 128 px encoder): about half the decoding cost"
    )
    gpu_jpeg_decode: GpuJpegDecode = Field(
        "auto", description="auto: with the model on CUDA and torchvision installed, decode each batch's JPEGs on "
        "the GPU in one call (nvJPEG) and resize there; a frame it refuses, and every frame otherwise, goes through "
        "the CPU decode threads. off: always the CPU decode threads"
    )
    max_in_flight_mb: float = Field(
        64.0, gt=0, description="frames polled and not yet acknowledged may hold this much memory (JPEG and decoded "
        "pixels); beyond it polling pauses and a backlog waits in Kafka"
    )
    fetch_max_wait_ms: int = Field(
        10, ge=0, le=500, description="how long the broker may hold a fetch for more data; low: a drained partition "
        "does not delay the others"
    )
    commit_interval_ms: int = Field(
        100, ge=0, le=5_000, description="commit what the broker acknowledged this often (0: at every loop turn); "
        "a crash redoes at most this much more"
    )
    torch_threads: int = Field(
        0, ge=0, description="CPU threads for the model; 0 = all cores. Set cores / workers when several share a host"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="/metrics, /healthz and /readyz; 0 picks a free port")
    metrics_host: str = Field(
        "127.0.0.1", description="listen address of /metrics, /healthz and /readyz; 0.0.0.0 lets Prometheus elsewhere scrape it"
    )
    thumbnail_px: int = Field(160, ge=32, description="longest side of the thumbnail sent with above-threshold results")


class Webhook(Section):
    """An HTTP endpoint that receives every alert event, signed with HMAC-SHA256."""

    url: str = Field(description="receiver URL: http:// or https:// with a host")
    secret: SecretStr = Field(description="HMAC-SHA256 key shared with the receiver; not empty")
    timeout_s: float = Field(5.0, gt=0, description="per attempt")
    max_attempts: int = Field(5, ge=1, description="then the delivery is recorded as failed for good")
    retry_initial_s: float = Field(1.0, gt=0, description="first retry delay; doubles per attempt, capped at 60 s")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Checked with pydantic's AnyHttpUrl, but kept as written: normalising it would change what
        # receivers and the failed-deliveries record see. The message never quotes the URL (it may hold a key).
        try:
            _HTTP_URL.validate_python(url)
        except ValidationError as exc:
            raise ValueError(f"not an http(s) URL with a host: {exc.errors()[0]['msg']}") from None
        return url

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, secret: SecretStr) -> SecretStr:
        if not secret.get_secret_value():
            raise ValueError("must not be empty: receivers could not tell a signed request from a forged one")
        return secret


class DriftSettings(Section):
    """Score drift (alerts/drift.py, docs/drift.md): each camera's live scores per question against the bundle's
    calibration reference, over a sliding window of its scored frames."""

    enabled: bool = Field(True, description="off: no drift gauges or events (also off for a bundle without a reference)")
    window_frames: int = Field(500, ge=20, description="the sliding window: a camera's last scored frames")
    # Not the textbook 0.25: a part stays 8-15 frames, so a window holds few parts and its PSI is noisy
    # (docs/drift.md, "Measured": up to 0.27 on a clean replay of a calibrated camera).
    psi_bound: float = Field(0.5, gt=0, description="population stability index above which the scores drifted")
    rate_bound: float = Field(
        0.15, gt=0, le=1.0, description="drift too when the window's above-threshold rate differs from the "
        "reference's by more than this")
    clear_ratio: float = Field(
        0.5, gt=0, le=1.0, description="the drift clears when both measures are back under this share of their bounds")


class AlertSettings(Section):
    """The alert service and its Redis keys."""

    group_id: str = Field("patchsight-alerts", description="consumer group of the alert service instances")
    key_prefix: str = Field("ps", description="prefix of every Redis key (docs/redis-keys.md)")
    stream_maxlen: int = Field(10_000, ge=10, description="approximate length cap of each per-line event stream")
    thumbnail_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long alert thumbnails are kept")
    evidence_max_bytes_per_line: int = Field(
        256 * 1024 * 1024, ge=1024, description="full-resolution frames kept as evidence of alerts and review "
        "items, per line; beyond it the oldest alert's or review's frames are evicted")
    evidence_frames_per_part: int = Field(
        32, ge=1, le=1024, description="frames of a part kept as its alert's or review item's evidence: every "
        "frame it was scored on up to this many, spread evenly over its pass beyond that")
    review_max_per_hour: int = Field(
        6, ge=0, le=3600, description="passed parts kept per line and clock hour for operators to review, "
        "the nearest a threshold of each 1/N hour; 0: none")
    metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus /metrics and /healthz; 0 picks a free port")
    metrics_host: str = Field(
        "127.0.0.1", description="listen address of /metrics and /healthz; 0.0.0.0 lets Prometheus elsewhere scrape it"
    )
    webhooks: list[Webhook] = Field(default_factory=list)
    drift: DriftSettings = DriftSettings()


class DashboardSettings(Section):
    """The live operator dashboard."""

    host: str = Field("127.0.0.1", description="listen address; 0.0.0.0 to serve other machines")
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="when set, every request needs it (Bearer header or ?token=)")


class PatchsightConfig(Section):
    """The whole configuration file."""

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    ingest: IngestSettings = IngestSettings()
    inference: InferenceSettings = InferenceSettings()
    alerts: AlertSettings = AlertSettings()
    dashboard: DashboardSettings = DashboardSettings()
    lines: list[LineConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_lines(self) -> "PatchsightConfig":
        ids = [line.id for line in self.lines]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate line ids: {dupes}")
        cams = [c.id for line in self.lines for c in line.cameras]
        dupes = sorted({i for i in cams if cams.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique across lines: {dupes}")
        return self

    def line(self, line_id: str) -> LineConfig | None:
        return next((line for line in self.lines if line.id == line_id), None)


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    out = dict(raw)
    if env.get("KAFKA_BOOTSTRAP"):
        _set_path(out, ["kafka", "bootstrap"], env["KAFKA_BOOTSTRAP"])
    if env.get("REDIS_URL"):
        _set_path(out, ["redis", "url"], env["REDIS_URL"])
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except (yaml.YAMLError, RecursionError):  # PyYAML recurses per nesting level
            value = text
        _set_path(out, path, value)
    return out


def validate_config(raw: Any, *, source: str = "configuration") -> PatchsightConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return PatchsightConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"  {loc}: {err['msg']}")
        first = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(problems), field=first or None) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending line, which may hold a password: say where, not what.
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> PatchsightConfig:
    """Read a YAML config (or defaults when ``path`` is None), apply env overrides, validate."""
    env = os.environ if env is None else env
    raw: Any = {}
    source = "environment"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8 text
            raise ConfigError(f"cannot read configuration file {p}: {type(exc).__name__}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {_yaml_problem(exc)}") from None
        except RecursionError:  # PyYAML recurses once per nesting level: a few thousand "[" exhaust the stack
            raise ConfigError(f"{p} is not valid YAML: nested too deeply") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return validate_config(apply_env_overrides(raw, env), source=source)
