"""The part tracker counts the synthetic line's parts without its ground truth.

Frames are rendered in memory and fed to the tracker as they come (nothing is kept but the
labels and what the tracker said), so a camera of 100-200 frames costs a second or two.

Tolerance. The synth labels a part only while its centre lies in ``inspected_x_range``,
which keeps a safety margin of about 9 px each side for the mounting angle and the shadow;
the tracker measures the part itself. So on the frame just before or after a labelled
passage the tracker may see the part wholly inside the zone while the label says no part
is. Such a frame may carry the part's id only next to the part's labelled frames (at most
two on each side) and only where the rendered part, shadow included, sticks out of the zone
by at most one cell of the tracker's grid (4 px at 640x480). Every labelled frame must carry
its part's id, each part exactly one id, each id exactly one part; no other frame may carry
an id. With one part at a time (the default synth) no frame at all is allowed an id it is not
labelled with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from model.tracker import PartTracker, TrackedFrame, largest_reduction
from ingest import synth
from schemas.config import CameraConfig, InspectionZone
from schemas.part import PartObservation

SIZE = (640, 480)
CELL = 4.0  # pixels along the belt that one cell of the tracker's grid covers at 640 wide
CENTRAL = (80, 0, 560, 480)  # the default zone: the frame's central square


def camera(line: str, seed: int, spacing=None, types=None, belt=None, cam: int = 1) -> synth.SynthCamera:
    index = synth.line_ids(3).index(line)
    c = synth.SynthCamera(line, f"{line}-cam{cam}", seed, types or synth.part_types_for(line, index), size=SIZE,
                          spacing=spacing)
    if belt is not None:
        c.belt_bgr = belt  # a darker belt than the camera drew
    return c


@dataclass
class Run:
    truths: list  # FrameTruth per frame
    scenes: list  # Scene per frame
    seen: dict  # tracker name -> [TrackedFrame]
    scale: float


REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}


def run(make, frames: int, trackers: dict, feed=None, jpeg: int | None = None, reduced: int = 1) -> Run:
    """Render ``frames`` frames of ``make()`` and feed every tracker in lockstep.

    ``feed(name, image, seq, truth)`` returns the (image, header) a tracker gets; default: the frame, no header.
    ``jpeg``: through JPEG at this quality first, decoded at 1/``reduced`` size as the worker may decode it.
    """
    cam, twin = make(), make()
    out = Run([], list(twin.scenes(frames)), {name: [] for name in trackers}, cam.scale)
    for seq, (image, truth) in enumerate(cam.frames(frames)):
        size = (image.shape[1], image.shape[0])
        if jpeg:
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg])
            image = cv2.imdecode(data, REDUCED[reduced])
        out.truths.append(truth)
        for name, tracker in trackers.items():
            img, header = feed(name, image, seq, truth) if feed else (image, None)
            out.seen[name].append(tracker.update(img, seq, header_part_id=header,
                                                 frame_size=size if reduced > 1 else None))
    return out


def extent(spec: synth.PartSpec, position: tuple[float, float], scale: float) -> tuple[float, float, float, float]:
    """Where the rendered part lies, its shadow included (6 px right and 8 px down at zoom 1)."""
    ptype = synth.PART_TYPES[spec.part_type]
    a = math.radians(abs(spec.angle))
    hw = (synth.PART_WIDTH / 2 * math.cos(a) + ptype.height / 2 * math.sin(a)) * scale
    hh = (ptype.height / 2 * math.cos(a) + synth.PART_WIDTH / 2 * math.sin(a)) * scale
    x, y = position
    return x - hw, y - hh, x + hw + 6 * scale, y + hh + 8 * scale


def shown(scene: synth.Scene) -> list:
    if scene.parts is not None:
        return list(scene.parts)
    return [(scene.spec, scene.position)] if scene.spec is not None else []


def protrusion(r: Run, i: int, box: tuple[int, int, int, int], zone=CENTRAL) -> float:
    """How far the part the tracker boxed on frame ``i`` really sticks out of the zone (inf: no part there)."""
    cx = (box[0] + box[2]) / 2
    parts = shown(r.scenes[i])
    if not parts:
        return math.inf
    spec, position = min(parts, key=lambda p: abs(p[1][0] - cx))
    x0, y0, x1, y1 = extent(spec, position, r.scale)
    return max(zone[0] - x0, zone[1] - y0, x1 - zone[2], y1 - zone[3])


def check_counts(r: Run, seen: list[TrackedFrame], *, exact: bool = False, labels: list | None = None,
                 zone=CENTRAL) -> tuple[int, int]:
    """The tolerance of the module docstring; returns (parts, unlabelled frames that carry an id).

    ``labels``: the part each frame is labelled with (default: the synth's truth).
    """
    labels = labels if labels is not None else [t.part_id for t in r.truths]
    n = len(seen)
    labelled: dict[int, list[int]] = {}
    ids: dict[str, list[int]] = {}
    for i, (label, s) in enumerate(zip(labels, seen)):
        if label is not None:
            labelled.setdefault(label, []).append(i)
        if s.part_id is not None:
            assert s.source == "tracker" and s.box is not None
            ids.setdefault(s.part_id, []).append(i)
    assert labelled, "the recording shows no part"
    for part, frames in labelled.items():
        got = [seen[i].part_id for i in frames]
        assert None not in got and len(set(got)) == 1, f"part {part} (frames {frames}) seen as {got}"
    owners: dict[str, int] = {}
    extra = 0
    for pid, frames in ids.items():
        parts = {labels[i] for i in frames} - {None}
        assert len(parts) <= 1, f"id {pid} spans parts {parts}"
        assert frames == list(range(frames[0], frames[-1] + 1)), f"id {pid} comes and goes: {frames}"
        unlabelled = [i for i in frames if labels[i] is None]
        extra += len(unlabelled)
        if exact:
            assert not unlabelled, f"id {pid} on unlabelled frames {unlabelled}"
        for i in unlabelled:
            assert protrusion(r, i, seen[i].box, zone) <= CELL, f"id {pid} on frame {i}: the part sticks out"
        if parts:
            owners[pid] = parts.pop()
            passage = labelled[owners[pid]]
            assert passage[0] - 2 <= frames[0] and frames[-1] <= passage[-1] + 2, f"id {pid} outlasts its part"
        else:  # a passage the recording cut: its labelled frames lie before frame 0 or after the last
            assert frames[0] == 0 or frames[-1] == n - 1, f"id {pid} names no part"
    assert sorted(owners.values()) == sorted(labelled), "one id per part"
    return len(labelled), extra


# --- counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,line", [(0, "line-a"), (0, "line-b"), (0, "line-c"),
                                       (1, "line-a"), (1, "line-b"), (1, "line-c"), (2, "line-a")])
def test_counts_the_parts_of_the_demo_lines_exactly(seed, line):
    # all five part types (line-a: bracket, housing; line-b: board, cover; line-c: panel, bracket)
    r = run(lambda: camera(line, seed), 100, {"t": PartTracker(f"{line}-cam1")})
    parts, extra = check_counts(r, r.seen["t"], exact=True)
    assert parts >= 5 and extra == 0


@pytest.mark.parametrize("seed,line", [(0, "line-a"), (0, "line-b"), (0, "line-c"), (1, "line-a"), (1, "line-b")])
def test_counts_the_parts_exactly_from_a_half_size_decode(seed, line):
    # the worker decodes a 640x480 JPEG at 320x240 for a 128 px encoder; boxes stay in frame pixels
    assert largest_reduction(SIZE) >= 2 and largest_reduction((96, 64)) == 1  # the grid needs a pixel per cell
    full = run(lambda: camera(line, seed), 100, {"t": PartTracker(f"{line}-cam1")}, jpeg=85)
    half = run(lambda: camera(line, seed), 100, {"t": PartTracker(f"{line}-cam1")}, jpeg=85, reduced=2)
    parts, extra = check_counts(half, half.seen["t"], exact=True)
    assert parts >= 5 and extra == 0
    assert [s.part_id for s in half.seen["t"]] == [s.part_id for s in full.seen["t"]]
    for a, b in zip(full.seen["t"], half.seen["t"]):
        if a.box is not None and b.box is not None:
            assert max(abs(p - q) for p, q in zip(a.box, b.box)) <= 2 * CELL, (a.box, b.box)


@pytest.mark.parametrize("seed,line,spacing", [(3, "line-a", synth.CLOSE_SPACING), (3, "line-b", synth.CLOSE_SPACING),
                                               (3, "line-c", synth.CLOSE_SPACING), (4, "line-a", (30.0, 60.0))])
def test_counts_parts_close_together_exactly(seed, line, spacing):
    tracker = PartTracker(f"{line}-cam1")
    r = run(lambda: camera(line, seed, spacing=spacing), 160, {"t": tracker})
    parts, extra = check_counts(r, r.seen["t"])
    assert parts >= 4 and extra <= 2 * parts
    # the next part enters while the previous one is still in view, on most frames
    assert sum(s.parts_in_view >= 2 for s in r.seen["t"]) > 60
    assert len(tracker._tracks) <= tracker.max_tracks


def test_counts_black_housings_on_a_dark_belt_through_jpeg():
    # the body is within 4 grey levels of the belt: the tracker sees features, outline and shadow
    r = run(lambda: camera("line-a", 1, spacing=synth.CLOSE_SPACING, types=["housing"], belt=(62, 60, 58)),
            140, {"t": PartTracker("line-a-cam1")}, jpeg=85)
    parts, _ = check_counts(r, r.seen["t"])
    assert parts >= 4


def test_a_line_stop_keeps_the_part_and_its_id():
    """The belt stops for 3 s with a part in the zone, then runs on."""
    cam = camera("line-b", 5, spacing=synth.CLOSE_SPACING)
    scenes = list(camera("line-b", 5, spacing=synth.CLOSE_SPACING).scenes(90))
    stop = next(i for i, s in enumerate(scenes) if s.part_id is not None and i > 30) + 2
    tracker = PartTracker("line-b-cam1")
    seen = []
    for seq, (image, _) in enumerate(cam.frames(90)):
        seen.append(tracker.update(image, len(seen)))
        if seq == stop:
            for k in range(30):  # the same scene, fresh sensor noise, light drifting a little
                look = dataclasses.replace(scenes[seq].look, brightness=scenes[seq].look.brightness * (1 + k / 300))
                still = synth.render_parts_frame(scenes[seq].parts, np.random.default_rng(k), look, SIZE)
                seen.append(tracker.update(still, len(seen)))
    during = {s.part_id for s in seen[stop : stop + 32]}  # the stop and the frame after it
    assert len(during) == 1 and None not in during


# --- ids ----------------------------------------------------------------------------------------


def test_same_frames_same_ids_and_a_header_names_the_part():
    trackers = {"a": PartTracker("line-c-cam1"), "b": PartTracker("line-c-cam1"), "plc": PartTracker("line-c-cam1"),
                "across": PartTracker("line-c-cam1", belt_axis="y")}

    def feed(name, image, seq, truth):
        if name == "plc":  # a PLC names every other part
            return image, f"PLC-{truth.part_id}" if truth.part_id and truth.part_id % 2 else None
        if name == "across":  # the same camera mounted with the belt running down the frame
            return cv2.transpose(image), None
        return image, None

    r = run(lambda: camera("line-c", 3, spacing=synth.CLOSE_SPACING), 120, trackers, feed)
    a, b, plc, across = (r.seen[k] for k in ("a", "b", "plc", "across"))
    assert a == b  # deterministic: same frames, same ids, boxes and counts
    assert [s.part_id for s in a] == [s.part_id for s in across]
    assert all(s.box is None or t.box == (s.box[1], s.box[0], s.box[3], s.box[2]) for s, t in zip(a, across))
    ids = {s.part_id for s in a if s.part_id}
    assert all(pid.startswith("line-c-cam1.") and a[int(pid.split(".")[-1])].part_id == pid for pid in ids)
    for s, p, truth in zip(a, plc, r.truths):
        if truth.part_id and truth.part_id % 2:
            assert (p.part_id, p.source) == (f"PLC-{truth.part_id}", "header")
            assert p.box == s.box  # the tracker still says where it is
        else:
            assert p == s  # frames without a header: as if no header had ever come
    check_counts(r, a)


def test_observation_is_what_the_result_carries():
    tracker = PartTracker("cam-7")
    image = synth.render_part_frame(synth.PartSpec("panel"), np.random.default_rng(0), (320, 240))
    empty = synth.render_part_frame(None, np.random.default_rng(0))
    assert tracker.update(empty, 0).observation() is None
    assert not tracker.update(empty, 1).in_zone
    seen = tracker.update(image, 2)
    assert seen.in_zone and seen.ready and seen.part_id == "cam-7.2"
    obs = seen.observation("top3")
    assert obs == PartObservation(part_id="cam-7.2", source="tracker", box=seen.box, aggregate="top3")
    x0, y0, x1, y1 = seen.box
    assert abs(x0 - 170) <= 8 and abs(x1 - 476) <= 8 and abs(y0 - 140) <= 10 and abs(y1 - 348) <= 10
    assert tracker.update(image, 3, header_part_id="A-1").observation().source == "header"
    # a camera id as long as ids may be still gives valid part ids
    long = PartTracker("c" * 64)
    long.update(empty, 0)
    assert PartObservation(part_id=long.update(image, 123456).part_id, source="tracker").part_id.endswith(".123456")


def test_a_restarted_camera_starts_its_tracks_afresh():
    tracker = PartTracker("cam-1")
    image = synth.render_part_frame(synth.PartSpec("cover"), np.random.default_rng(0), (320, 240))
    empty = synth.render_part_frame(None, np.random.default_rng(1))
    tracker.update(empty, 40)
    assert tracker.update(image, 41).part_id == "cam-1.41"
    assert tracker.update(image, 42).part_id == "cam-1.41"
    assert tracker.update(image, 0).part_id == "cam-1.0"  # seq went back: a new stream
    assert tracker.update(image, 500).part_id == "cam-1.500"  # a long gap: nothing to follow across it


# --- zones ----------------------------------------------------------------------------------------


def test_a_custom_zone_is_where_parts_are_inspected():
    zone = (150, 70, 560, 420)
    cfg = CameraConfig(id="line-a-cam1", zone=InspectionZone(x0=150, y0=70, x1=560, y1=420))
    trackers = {"zone": PartTracker.from_camera(cfg, (640, 480)),
                "never": PartTracker("line-a-cam1", (0, 250, 640, 480))}
    r = run(lambda: camera("line-a", 6, spacing=synth.CLOSE_SPACING), 160, trackers)
    assert trackers["zone"].zone_px == zone
    # the labels for this zone, from where the parts were drawn: wholly inside it by a cell's
    # margin (4 px along the belt, 8 across); the tolerance covers the band between
    labels = []
    for scene in r.scenes:
        inside = [spec.seed for spec, position in shown(scene)
                  if (lambda e: e[0] >= zone[0] + CELL and e[1] >= zone[1] + 8 and e[2] <= zone[2] - CELL
                      and e[3] <= zone[3] - 8)(extent(spec, position, r.scale))]
        assert len(inside) <= 1
        labels.append(inside[0] if inside else None)
    parts, _ = check_counts(r, r.seen["zone"], labels=labels, zone=zone)
    assert parts >= 3
    for s in r.seen["zone"]:
        if s.box is not None:
            assert zone[0] <= s.box[0] and zone[1] <= s.box[1] and s.box[2] <= zone[2] and s.box[3] <= zone[3]
    # a zone no part fits in (the lower half): no part is ever inside it
    assert all(s.part_id is None for s in r.seen["never"])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        PartTracker("bad id")
    with pytest.raises(ValueError):
        PartTracker("c", (10, 10, 5, 20))
    with pytest.raises(ValueError):
        PartTracker("c", (0, 0, 700, 480), (640, 480))  # the zone leaves the frame
    with pytest.raises(ValueError):
        PartTracker("c", belt_axis="z")
    with pytest.raises(ValueError):
        PartTracker("c").update(synth.render_part_frame(None, np.random.default_rng(0)), 0, header_part_id="no spaces")


def test_a_thing_left_lying_becomes_belt():
    """An object that stays put while the belt runs is learned into the background after ``absorb_after`` frames."""
    tracker = PartTracker("cam-1", absorb_after=20)
    thing = synth.PartSpec("bracket", seed=2)
    seen = []
    for seq in range(60):
        look = synth.CameraLook(belt_phase=7.0 * seq, noise_sigma=3.0)
        parts = [(thing, (320.0, 240.0))] if seq >= 5 else []
        seen.append(tracker.update(synth.render_parts_frame(parts, np.random.default_rng(seq), look, SIZE), seq))
    assert all(s.parts_in_view == 0 for s in seen[:5])
    assert all(s.part_id == "cam-1.5" for s in seen[5:20])  # a part, standing still in the zone
    assert all(s.parts_in_view == 0 and s.part_id is None for s in seen[40:])  # belt by now
    assert {s.part_id for s in seen} == {None, "cam-1.5"}  # and what it leaves behind is no part
