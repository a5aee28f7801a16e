"""Bad input, fuzzed: every malformed record, message or config ends in a typed error or a dead letter.

Property tests (hypothesis, bounded example counts) feed the parsers of the contract
and the worker's JPEG decode step with arbitrary and mutated input; the only exception
allowed out is the contract's own (``SchemaError`` / ``ConfigError``), and nothing may take
long. The last test sends a mix of garbage and good frames through a real worker on the
real broker: each bad record is dead-lettered with its reason, each good one gets a result.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inference.runner import ModelRunner, jpeg_size
from inference.worker import Worker
from model.bundle import Bundle
from schemas.alert import DefectAlert
from schemas.config import PatchsightConfig, load_config, validate_config
from schemas.dead_letter import DeadLetter
from schemas.errors import ConfigError, SchemaError, UnsupportedSchemaVersion
from schemas.frame import FrameMessage, FrameMode
from schemas.result import InspectionResult, QuestionScore, Timing
from tests.inference.test_worker import (  # noqa: F401  (fixtures)
    bundle,
    bundle_dir,
    config,
    frame,
    jpeg,
    publish,
    read_topic,
    results,
    running,
)
from tests.model.conftest import clip_tok  # noqa: F401  (fixture)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_HEADERS = ["ps-schema", "ps-line", "ps-camera", "ps-seq", "ps-capture-ns", "ps-encoding", "ps-width",
                 "ps-height", "ps-mode"]


def good_frame(**changes: Any) -> FrameMessage:
    fields = dict(line_id="line-a", camera_id="cam-a1", seq=7, capture_ns=1_700_000_000_000_000_000, width=96,
                  height=64, mode=FrameMode.replay, payload=jpeg(7))
    return FrameMessage(**{**fields, **changes})


# --- frame records ----------------------------------------------------------------------

header_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"1", b"2", b"999", b"01", b" 1", b"jpeg", b"png", b"live", b"replay", b"", b"x" * 300,
                     "²".encode(), "١٢".encode()]),  # digits int() refuses / accepts
)
header_names = st.one_of(st.sampled_from(FRAME_HEADERS), st.text(max_size=12), st.sampled_from(["ps-", "PS-SEQ"]))


@FUZZ
@given(key=st.one_of(st.none(), st.binary(max_size=16)), value=st.one_of(st.none(), st.binary(max_size=64)),
       headers=st.lists(st.tuples(header_names, header_values), max_size=14))
def test_arbitrary_frame_records_parse_or_raise_a_schema_error(key, value, headers) -> None:
    try:
        msg = FrameMessage.from_record(key, value, headers)
    except SchemaError as exc:
        assert exc.reason in {"malformed", "unsupported-version"} and str(exc)
        return
    # what parses is a frame the contract accepts, and it round-trips
    assert FrameMessage.from_record(*msg.to_record()) == msg


@FUZZ
@given(name=st.sampled_from(FRAME_HEADERS), raw=header_values, drop=st.booleans())
def test_one_bad_header_on_a_good_frame_is_a_typed_error(name: str, raw: bytes | None, drop: bool) -> None:
    key, value, headers = good_frame().to_record()
    mutated = [(n, v) for n, v in headers if n != name] if drop else [(n, raw if n == name else v) for n, v in headers]
    try:
        msg = FrameMessage.from_record(key, value, mutated)
    except SchemaError:
        return
    assert msg.seq >= 0 and 0 < msg.width <= 16384 and msg.line_id and msg.camera_id


@pytest.mark.parametrize("version", [b"0", b"2", b"1000", b"1.0", b"v1", b"-1"])
def test_other_frame_schema_versions_are_refused_by_name(version: bytes) -> None:
    key, value, headers = good_frame().to_record()
    with pytest.raises(UnsupportedSchemaVersion, match="ps-schema"):
        FrameMessage.from_record(key, value, [(n, version if n == "ps-schema" else v) for n, v in headers])


def test_a_huge_header_is_refused_before_anything_is_read_from_it() -> None:
    key, value, headers = good_frame().to_record()
    with pytest.raises(SchemaError, match="longer than 256 bytes"):
        FrameMessage.from_record(key, value, headers + [("ps-line", b"l" * 1_000_000)])


# --- JSON messages ------------------------------------------------------------------------


def valid_result() -> dict[str, Any]:
    return InspectionResult(
        line_id="line-a", camera_id="cam-a1", seq=3, capture_ns=10, model_id="m", worker_id="w",
        scores=[QuestionScore(question_id="q", score=0.7, threshold=0.5, defect_type="d", above_threshold=True)],
        timing=Timing(batch_size=1),
    ).model_dump(mode="json")


def valid_alert() -> dict[str, Any]:
    return DefectAlert(
        alert_id="a1", line_id="line-a", camera_id="cam-a1", question_id="q", question="Is it?", defect_type="d",
        score=0.9, threshold=0.5, first_seq=1, last_seq=3, first_capture_ns=1, trigger_capture_ns=2, raised_ns=3,
        model_id="m",
    ).model_dump(mode="json")


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                        st.text(max_size=10))
json_trees = st.recursive(json_leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                          max_leaves=20)


@FUZZ
@given(kind=st.sampled_from([InspectionResult, DefectAlert]),
       raw=st.one_of(st.binary(max_size=200), st.text(max_size=200), json_trees.map(lambda t: json.dumps(t).encode())))
def test_arbitrary_bytes_are_a_typed_error(kind, raw) -> None:
    with pytest.raises(SchemaError):
        kind.from_json(raw)


@FUZZ
@given(kind=st.sampled_from(["result", "alert"]), field=st.data(), value=json_trees, remove=st.booleans())
def test_mutated_valid_messages_parse_or_raise_a_schema_error(kind: str, field, value, remove: bool) -> None:
    cls, body = (InspectionResult, valid_result()) if kind == "result" else (DefectAlert, valid_alert())
    name = field.draw(st.sampled_from(sorted(body) + ["unknown_field"]))
    if remove:
        body.pop(name, None)
    else:
        body[name] = value
    try:
        msg = cls.from_json(json.dumps(body).encode())
    except SchemaError:
        return
    assert cls.from_json(msg.to_json()) == msg


@FUZZ
@given(kind=st.sampled_from([InspectionResult, DefectAlert]), version=st.integers(-(2**40), 2**40))
def test_future_and_past_schema_versions_are_refused_in_body_and_header(kind, version: int) -> None:
    assume(version != kind.SCHEMA_VERSION)
    body = valid_result() if kind is InspectionResult else valid_alert()
    body["schema_version"] = version
    with pytest.raises(UnsupportedSchemaVersion):
        kind.from_json(json.dumps(body).encode())
    good = json.dumps({**body, "schema_version": kind.SCHEMA_VERSION}).encode()
    with pytest.raises(UnsupportedSchemaVersion):
        kind.from_record(good, [("ps-schema", str(version).encode())])


def test_deeply_nested_and_oversized_json_is_a_typed_error() -> None:
    for raw in (b"[" * 200_000, b'{"a":' * 100_000, b" " * (4 * 1024 * 1024 + 1), b"\xff\xfe\x00"):
        with pytest.raises(SchemaError):
            InspectionResult.from_json(raw)


@FUZZ
@given(headers=st.lists(st.tuples(st.sampled_from(["ps-dlq-reason", "ps-dlq-source", "ps-dlq-error", "x"]),
                                  st.one_of(st.none(), st.binary(max_size=30))), max_size=6))
def test_dead_letter_headers_never_break_the_reader(headers) -> None:
    letter = DeadLetter.from_record(b"k", b"v", headers)
    assert isinstance(letter.source_partition, int) and isinstance(letter.source_offset, int)


# --- configuration ------------------------------------------------------------------------

CONFIG_KEYS = ["kafka", "redis", "model", "ingest", "inference", "alerts", "dashboard", "lines", "bootstrap",
               "topics", "frames", "partitions", "url", "bundle", "device", "max_batch", "max_delay_ms", "id",
               "cameras", "questions", "text", "defect_type", "threshold", "fps", "source", "images", "resize",
               "alert_policy", "k", "n", "security", "protocol", "webhooks", "secret", "port", "token"]
yaml_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
                        st.sampled_from(["cpu", "PLAINTEXT", "SASL_SSL", "line-a", "Is it broken?", "1e309"]))
yaml_trees = st.recursive(
    yaml_leaves,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)), kids,
                                           max_size=5)),
    max_leaves=30,
)


@FUZZ
@given(raw=st.one_of(yaml_trees, st.dictionaries(st.sampled_from(CONFIG_KEYS[:8]), yaml_trees, max_size=5)))
def test_arbitrary_config_trees_validate_or_raise_config_error(raw: Any) -> None:
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, PatchsightConfig)


@settings(max_examples=60, deadline=None)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["a: &a [*a]", "lines: !!python/object:os.system ls",
                                       "- - - -\n  x", "kafka: {bootstrap: [1, 2]}", "\t\x00"])),
       env=st.dictionaries(st.sampled_from(["PATCHSIGHT__INFERENCE__MAX_BATCH", "PATCHSIGHT__LINES",
                                            "PATCHSIGHT__KAFKA", "PATCHSIGHT____", "KAFKA_BOOTSTRAP", "REDIS_URL"]),
                           st.text(max_size=30), max_size=3))
def test_config_files_and_env_overrides_load_or_raise_config_error(tmp_path_factory, text: str, env) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path, env=env)
    except ConfigError as exc:
        assert str(exc)


def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error(tmp_path: Path) -> None:
    # PyYAML recurses once per level; the Python stack gives out after ~1000 (and takes ~2 s to say so)
    path = tmp_path / "deep.yaml"
    path.write_text("lines: " + "[" * 3000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="inference.max_batch"):  # the override stays text, and is refused
        load_config(None, env={"PATCHSIGHT__INFERENCE__MAX_BATCH": "[" * 3000})


def test_a_config_that_is_not_a_readable_text_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for path in (tmp_path, tmp_path / "bin.yaml"):
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(path, env={})


# --- the worker's decode step -------------------------------------------------------------------


def sof_claiming(width: int, height: int, base: bytes | None = None) -> bytes:
    """A tiny JPEG whose frame header claims another size: OpenCV would allocate for the claim."""
    data = bytearray(base or jpeg(1, (16, 16)))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def decoder(bundle_dir: Path, bundle: Bundle) -> ModelRunner:  # noqa: F811
    cfg = validate_config({"lines": [{"id": "line-a", "cameras": [{"id": "cam-a1"}],
                                      "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "d"}]}],
                           "model": {"bundle": str(bundle_dir), "device": "cpu"}, "inference": {"metrics_port": 0}})
    return ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, worker_id="fuzz")


def mutated_jpegs() -> st.SearchStrategy[bytes]:
    base = jpeg(3)
    truncated = st.integers(1, len(base)).map(lambda n: base[:n])
    flipped = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(b if i not in dict(edits) else dict(edits)[i] for i, b in enumerate(base)))
    spliced = st.tuples(st.integers(0, len(base)), st.binary(min_size=1, max_size=64)).map(
        lambda t: base[: t[0]] + t[1] + base[t[0]:])
    claims = st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda wh: sof_claiming(*wh))
    return st.one_of(truncated, flipped, spliced, claims, st.binary(min_size=1, max_size=300),
                     st.binary(max_size=64).map(lambda b: b"\xff\xd8" + b))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated_jpegs())
def test_decode_of_a_malformed_jpeg_is_a_reason_or_a_frame_never_an_exception(
    decoder: ModelRunner, payload: bytes
) -> None:
    started = time.perf_counter()
    out = decoder.decode(good_frame(payload=payload))
    assert time.perf_counter() - started < 2.0
    if isinstance(out, str):
        assert out
    else:  # decoded at 1/reduction of the frame's size, and the encoder's uint8 square made from it
        assert out.image.shape[:2] == (-(-64 // out.reduction), -(-96 // out.reduction))
        side = decoder.preprocess.image_size
        assert out.square.shape == (side, side, 3) and out.square.dtype == np.uint8
    good = decoder.decode(good_frame())  # the next good frame is processed
    assert not isinstance(good, str)


@pytest.mark.parametrize("width,height", [(30000, 30000), (16000, 16000), (96, 65000)])
def test_a_jpeg_claiming_a_huge_size_is_refused_without_decoding(decoder: ModelRunner, width: int, height: int) -> None:
    started = time.perf_counter()
    out = decoder.decode(good_frame(payload=sof_claiming(width, height)))
    assert isinstance(out, str) and f"{width}x{height}" in out
    assert time.perf_counter() - started < 0.5  # OpenCV alone took 16 s and 5.9 GB on 30000x30000


def test_jpeg_size_reads_baseline_and_progressive_headers() -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    for flags in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        assert jpeg_size(cv2.imencode(".jpg", image, flags)[1].tobytes()) == (53, 37)
    png = cv2.imencode(".png", image)[1].tobytes()
    assert jpeg_size(png) is None and jpeg_size(b"\xff\xd8") is None and jpeg_size(b"") is None


# --- end to end: garbage and good frames through a real worker ---------------------------------------------


def test_garbage_mixed_with_good_frames_through_a_real_worker(config: Callable[..., PatchsightConfig],  # noqa: F811
                                                              bundle: Bundle) -> None:  # noqa: F811
    cfg = config(max_batch=4, max_delay_ms=10)
    good = [frame("cam-a1", "line-a", seq) for seq in range(0, 20, 2)]
    base_key, base_value, base_headers = frame("cam-a1", "line-a", 1).to_record()
    future = [(n, b"2" if n == "ps-schema" else v) for n, v in base_headers]
    bad = {
        "truncated": ("undecodable", frame("cam-a1", "line-a", 1, payload=jpeg(1)[:20]).to_record()),
        "bomb": ("undecodable", frame("cam-a1", "line-a", 3, payload=sof_claiming(96, 64000, jpeg(3))).to_record()),
        "future": ("unsupported-version", (base_key, base_value, future)),
        "huge-header": ("malformed", (base_key, base_value, base_headers + [("ps-line", b"x" * 100_000)])),
        "unknown-line": ("unknown-line", frame("cam-z", "line-z", 5).to_record()),
        "unknown-camera": ("unknown-camera", frame("cam-b1", "line-a", 7).to_record()),
        "no-headers": ("malformed", (b"cam-a1", b"\xff\xd8garbage", [])),
    }
    records = []
    for i, g in enumerate(good):  # bad records interleaved between good ones, on one partition
        records.append(g.to_record())
        if i < len(bad):
            records.append(list(bad.values())[i][1])
    publish(cfg, records)
    worker = Worker(cfg, bundle, worker_id="w-fuzz")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        got = results(cfg, lambda rs: len(rs) >= len(good), timeout=90)
        letters = read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: len(rs) >= len(bad), timeout=60)
        assert thread.is_alive() and worker.is_live(), "the worker died on bad input"
        # and it still works: a good frame sent after all the garbage gets its result
        publish(cfg, [frame("cam-a2", "line-a", 100).to_record()])
        after = results(cfg, lambda rs: any(r.camera_id == "cam-a2" for r in rs), timeout=60)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert {(r.camera_id, r.seq) for r in got} >= {(g.camera_id, g.seq) for g in good}
    assert any(r.camera_id == "cam-a2" and r.seq == 100 for r in after)
    parsed = [DeadLetter.from_record(r.key, r.value, r.headers) for r in letters]
    assert sorted(d.reason for d in parsed) == sorted(reason for reason, _ in bad.values())
    # each bad record is in the DLQ under its own reason, with its original bytes for a re-publish
    assert Counter((d.value, d.reason) for d in parsed) == Counter((v, reason) for reason, (_, v, _) in bad.values())
