"""The synthetic line draws what its labels say: checked on pixels and geometry, not on the labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ingest import synth
from ingest.recording import Recording
from ingest.synth import CLEAN_LOOK, PartSpec, SynthCamera, render_part_frame

SIZE = (640, 480)
CENTRE = (320, 240)


def render(spec: PartSpec | None, look=CLEAN_LOOK, position=CENTRE) -> np.ndarray:
    return render_part_frame(spec, np.random.default_rng(0), position, look, SIZE)


def colour_mask(image: np.ndarray, bgr: tuple[int, int, int], tol: int = 6) -> np.ndarray:
    return (np.abs(image.astype(int) - np.array(bgr)).max(axis=2) <= tol).astype(np.uint8)


def blobs(mask: np.ndarray, min_area: int) -> list[tuple[float, float]]:
    """Centroids (x, y) of connected components of at least ``min_area`` pixels."""
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    return [tuple(centroids[i]) for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]


def centroid_x(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    assert len(xs) > 50, "feature not found in the image"
    return float(xs.mean())


@pytest.mark.parametrize("part_type", sorted(synth.PART_TYPES))
def test_label_side_is_where_the_pixels_are(part_type):
    for side in ("left", "right"):
        image = render(PartSpec(part_type, seed=1, label_side=side))
        x = centroid_x(colour_mask(image, synth.LABEL_BGR))
        assert (x < CENTRE[0] - 40) if side == "left" else (x > CENTRE[0] + 40), (side, x)


def test_connector_is_on_the_labelled_side_of_the_chip():
    for side in ("left", "right"):
        image = render(PartSpec("board", seed=2, connector_side=side))
        connector = centroid_x(colour_mask(image, synth.CONNECTOR_BGR))
        chip = centroid_x(colour_mask(image, synth.CHIP_BGR, tol=3))
        assert (connector < chip) if side == "left" else (connector > chip)


@pytest.mark.parametrize("holes", [3, 4, 5])
def test_hole_count_counts_on_the_image(holes):
    image = render(PartSpec("cover", seed=3, holes=holes))
    assert len(blobs(colour_mask(image, synth.HOLE_BGR, tol=5), min_area=60)) == holes


def test_missing_screw_leaves_three_screws_and_a_gap_in_that_corner():
    for corner in synth.CORNERS:
        image = render(PartSpec("bracket", seed=4, missing_screw=corner))
        screws = blobs(colour_mask(image, synth.SCREW_BGR, tol=4), min_area=80)
        gaps = blobs(colour_mask(image, synth.GAP_BGR, tol=4), min_area=40)
        assert len(screws) == 3 and len(gaps) == 1
        gx, gy = gaps[0]
        assert ("left" in corner) == (gx < CENTRE[0]) and ("top" in corner) == (gy < CENTRE[1])
    assert len(blobs(colour_mask(render(PartSpec("bracket", seed=4)), synth.SCREW_BGR, tol=4), 80)) == 4


@pytest.mark.parametrize("part_type", sorted(synth.PART_TYPES))
def test_flipped_part_has_its_arrow_pointing_down(part_type):
    for flipped in (False, True):
        arrow = colour_mask(render(PartSpec(part_type, seed=5, flipped=flipped)), synth.ARROW_BGR, tol=10)
        rows = np.nonzero(arrow.any(axis=1))[0]
        top, bottom = arrow[rows[0] : rows[0] + 4].sum(), arrow[rows[-1] - 3 : rows[-1] + 1].sum()
        # an arrow narrows to its tip: the tip row is the narrow end
        assert (top > bottom) if flipped else (top < bottom), (flipped, top, bottom)


def test_chamfer_moves_to_the_bottom_when_flipped():
    ptype = synth.PART_TYPES["bracket"]
    belt = render(None)
    x = CENTRE[0] - synth.PART_WIDTH // 2 + 6
    top_y, bottom_y = CENTRE[1] - ptype.height // 2 + 6, CENTRE[1] + ptype.height // 2 - 6
    for flipped in (False, True):
        image = render(PartSpec("bracket", seed=6, flipped=flipped))
        cut = bottom_y if flipped else top_y
        kept = top_y if flipped else bottom_y
        assert np.abs(image[cut, x].astype(int) - belt[cut, x]).max() < 90  # belt (maybe shadowed) shows through
        assert np.abs(image[kept, x].astype(int) - np.array(ptype.body_bgr)).max() < 40


@pytest.mark.parametrize("defect", ["scratch", "crack", "stain", "missing_screw"])
def test_fine_defects_change_only_the_part_and_survive_the_encoder_resolution(defect):
    look = synth.CameraLook(noise_sigma=4, blur_px=6, brightness=0.9, vignette=0.2)
    clean = PartSpec("housing", seed=7)
    bad = synth.set_defect(clean, defect)
    a, b = render(clean, look), render(bad, look)
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2)
    ys, xs = np.nonzero(diff > 0)
    half_w, half_h = synth.PART_WIDTH / 2 + 12, synth.PART_TYPES["housing"].height / 2 + 12
    assert len(xs) > 100
    assert (np.abs(xs - CENTRE[0]) <= half_w).all() and (np.abs(ys - CENTRE[1]) <= half_h).all()
    # what a 128 px encoder sees (shortest edge to 128, central square): the defect is still there
    def small(img):
        img = cv2.resize(img, (171, 128), interpolation=cv2.INTER_CUBIC)
        return img[:, 21:149].astype(int)
    assert np.abs(small(a) - small(b)).max() > 60


def test_pairs_differ_in_the_asked_property_only():
    spec = PartSpec("panel", seed=8, angle=2.0)
    for defect in synth.DEFECT_TYPES + synth.EVAL_ONLY_QUESTIONS:
        base = synth.clear_defect(spec, defect)
        flipped = synth.set_defect(base, defect)
        changed = {k for k in base.answers() if base.answers()[k] != flipped.answers()[k]}
        assert defect in changed and changed <= {defect, "missing_screw", "label_near_gap"}


def test_label_near_gap_is_a_relation_of_two_features():
    near = PartSpec("bracket", label_side="left", missing_screw="bottom_left")
    far = PartSpec("bracket", label_side="left", missing_screw="top_right")
    assert near.answers()["label_near_gap"] and not far.answers()["label_near_gap"]
    assert not PartSpec("bracket").answers()["label_near_gap"]
    # the empty screw position and the label really are on the same side of the image
    image = render(near)
    gap = blobs(colour_mask(image, synth.GAP_BGR, tol=4), 40)[0]
    label = centroid_x(colour_mask(image, synth.LABEL_BGR))
    assert (gap[0] < CENTRE[0]) == (label < CENTRE[0])


def test_parts_stay_inside_the_inspected_square():
    side = min(SIZE)
    lo_col, hi_col = (SIZE[0] - side) // 2, (SIZE[0] + side) // 2
    look = synth.CameraLook(scale=1.04)
    lo, hi = synth.inspected_x_range(SIZE, look.scale)
    empty = render(None, look)
    for x in (lo, hi):
        for angle in (-4.0, 4.0):
            image = render(PartSpec("housing", angle=angle), look, (x, 240))
            outside = np.abs(image.astype(int) - empty.astype(int)).max(axis=2)
            assert outside[:, : lo_col - 1].max() == 0 and outside[:, hi_col + 1 :].max() == 0


def test_camera_stream_truth_matches_what_is_drawn():
    cam = SynthCamera("line-b", "cam1", seed=11, part_types=["board", "cover"], defect_rate=0.6)
    scenes = list(SynthCamera("line-b", "cam1", seed=11, part_types=["board", "cover"], defect_rate=0.6).scenes(120))
    frames = list(cam.frames(120))
    checked = 0
    for (image, truth), scene in zip(frames, scenes):
        assert set(truth.answers) == {q.id for q in synth.SYNTH_QUESTIONS}
        if scene.spec is None:
            assert truth.part_id is None and not any(truth.answers.values())
            continue
        assert truth.answers == scene.spec.answers() and truth.part_type == scene.spec.part_type
        # the noisy, blurred, drifting frame looks like its labelled label side, not the other one
        other = scene.spec.replace(label_side="left" if scene.spec.label_side == "right" else "right")
        right = render_part_frame(scene.spec, np.random.default_rng(0), scene.position, scene.look, SIZE)
        wrong = render_part_frame(other, np.random.default_rng(0), scene.position, scene.look, SIZE)
        err_right = np.abs(image.astype(int) - right.astype(int)).mean()
        err_wrong = np.abs(image.astype(int) - wrong.astype(int)).mean()
        assert err_right < err_wrong
        checked += 1
    assert checked > 40
    # parts pass over consecutive frames, separated by empty belt
    runs = [t.part_id for _, t in frames]
    lengths = [sum(1 for r in runs if r == pid) for pid in set(runs) - {None}]
    assert all(8 <= n <= 15 for n in lengths[:-1])
    # the belt moves: consecutive frames differ even when empty
    assert any(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for (a, _), (b, _) in zip(frames, frames[1:]))


def test_every_category_is_present_at_the_default_rate():
    rng = np.random.default_rng(0)
    seen = {d: 0 for d in synth.DEFECT_TYPES}
    defective = 0
    for _ in range(2000):
        spec = synth.sample_part(rng, "bracket")
        defective += bool(spec.defects)
        for d in spec.defects:
            seen[d] += 1
    assert 0.2 < defective / 2000 < 0.3
    assert min(seen.values()) > 30


def test_recordings_are_labelled_and_reproducible(tmp_path):
    kwargs = dict(lines=2, cameras=1, frames=25, seed=3, size=(320, 240))
    a = synth.write_recordings(tmp_path / "a", **kwargs)
    b = synth.write_recordings(tmp_path / "b", **kwargs)
    c = synth.write_recordings(tmp_path / "c", **{**kwargs, "seed": 4})
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb, pc in zip(a, b, c):
        assert (pa / "frames.bin").read_bytes() == (pb / "frames.bin").read_bytes()
        assert (pa / "frames.bin").read_bytes() != (pc / "frames.bin").read_bytes()
        rec = Recording(pa)
        assert rec.meta.labelled and len(rec) == 25 and rec.meta.width == 320
        for entry, jpeg in rec.frames():
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (240, 320, 3)
            assert set(entry.truth.answers) == {q.id for q in synth.SYNTH_QUESTIONS}
            assert sorted(entry.truth.defects) == sorted(
                k for k, v in entry.truth.answers.items() if v and k in synth.DEFECT_TYPES
            )
    assert {Recording(p).meta.line_id for p in a} == {"line-a", "line-b"}


def test_part_recordings_are_the_bytes_they_were(tmp_path):
    # the part family's recordings before the fabric family existed (OpenCV of requirements.lock): the
    # caches and encoded sets of earlier rounds are keyed by these bytes
    import hashlib

    digest = hashlib.sha256()
    for path in synth.write_recordings(tmp_path, lines=2, cameras=1, frames=12, seed=5, size=(320, 240)):
        for name in ("meta.json", "index.jsonl", "frames.bin"):
            digest.update((path / name).read_bytes())
    assert digest.hexdigest() == "afd6032b31d76be52039a7c3ec5ab0ed0eb83b7e4a072ce72774030e63b5750a"


def test_synth_command_writes_one_recording_per_camera(tmp_path):
    from ingest.synth_cli import app

    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--lines", "1", "--cameras", "2", "--frames", "5",
                                      "--width", "320", "--height", "240"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "line-a").iterdir()) == ["line-a-cam1", "line-a-cam2"]
    again = CliRunner().invoke(app, ["--out", str(tmp_path), "--lines", "1", "--frames", "5"])
    assert again.exit_code == 1 and "already holds a recording" in again.output


def test_demo_config_asks_the_alert_questions():
    from schemas.config import load_config

    cfg = load_config("config/demo.yaml", env={})
    assert len(cfg.lines) == 3 and all(len(line.cameras) == 2 for line in cfg.lines)
    for line in cfg.lines:
        assert [q.model_dump() for q in line.questions] == [q.model_dump() for q in synth.ALERT_QUESTIONS]
        assert (line.alert_policy.k, line.alert_policy.n) == (3, 5)
    raw = yaml.safe_load(open("config/demo.yaml"))
    assert {line["description"] for line in raw["lines"]}.__len__() == 3  # different parts per line


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        PartSpec("spaceship")
    with pytest.raises(ValueError):
        PartSpec("bracket", missing_screw="middle")
    with pytest.raises(ValueError):
        SynthCamera("line-a", "c", 0, ["bracket"], defect_rate=1.5)


# --- parts close together ------------------------------------------------------------------


def _scene_digest(cam: SynthCamera, count: int) -> str:
    """What the camera shows, frame by frame, as numbers printed the same on any platform."""
    import hashlib

    h = hashlib.sha256()
    for sc in cam.scenes(count):
        look = sc.look
        nums = [look.scale, look.belt_phase, look.brightness, *look.tint, look.vignette, look.noise_sigma,
                look.blur_px, *look.belt_bgr]
        if sc.spec is not None:
            nums += [sc.spec.seed, sc.spec.angle, sc.spec.holes, sc.part_id, *sc.position]
        shown = repr(sc.spec and (sc.spec.part_type, sc.spec.defects))
        h.update((shown + " ".join(f"{float(v):.9g}" for v in nums)).encode())
    return h.hexdigest()


def test_one_part_at_a_time_is_what_it_always_was():
    # digests of the stream before parts close together existed: existing seeds replay unchanged
    assert _scene_digest(SynthCamera("line-a", "line-a-cam1", 0, ["bracket", "housing"]), 80) == (
        "4b8b6ff6e774d040d89b422f58fa18acf719a7ee92687fa9e71598090e89a42a")
    assert _scene_digest(SynthCamera("line-b", "line-b-cam2", 7, ["board", "cover"]), 80) == (
        "3c506d671f04135c6769c06d5459a519a9093c78caf04bcffbb308794e6945dd")
    assert all(sc.parts is None for sc in SynthCamera("line-a", "c", 1, ["bracket"]).scenes(40))


def test_several_parts_render_like_one_part_each():
    look = synth.CameraLook(noise_sigma=4, blur_px=6, brightness=0.9, vignette=0.2, belt_phase=13.0)
    a, b = PartSpec("housing", seed=3, angle=2.0), PartSpec("board", seed=4, angle=-3.0)
    for spec, position in ((a, (100.0, 230.0)), (b, (-60.0, 240.0)), (a, (700.0, 250.0))):
        one = render_part_frame(spec, np.random.default_rng(1), position, look, SIZE)
        assert np.array_equal(one, synth.render_parts_frame([(spec, position)], np.random.default_rng(1), look, SIZE))
    assert np.array_equal(render_part_frame(None, np.random.default_rng(1), None, look, SIZE),
                          synth.render_parts_frame([], np.random.default_rng(1), look, SIZE))
    # two parts: each where it was put, the belt between them untouched
    empty = render(None)
    parts = [(a, (170.0, 240.0)), (b, (500.0, 240.0))]
    both = synth.render_parts_frame(parts, np.random.default_rng(0), CLEAN_LOOK, SIZE)
    changed = np.abs(both.astype(int) - empty.astype(int)).max(axis=2) > 0
    columns = np.nonzero(changed.any(axis=0))[0]
    assert columns.min() < 30 and columns.max() > 640 - 10 - 30  # 170 - 150 and 500 + 150 (+ shadow)
    assert not changed[:, 336:340].any()  # the gap between them


def test_parts_close_together_follow_each_other_across_the_view():
    cam = SynthCamera("line-a", "line-a-cam1", 3, ["bracket", "housing"], spacing=synth.CLOSE_SPACING)
    scenes = list(SynthCamera("line-a", "line-a-cam1", 3, ["bracket", "housing"],
                              spacing=synth.CLOSE_SPACING).scenes(160))
    frames = list(cam.frames(160))
    lo, hi = synth.inspected_x_range(SIZE, cam.scale)
    k = cam.scale
    assert scenes[0].parts, "the camera starts on a loaded belt"
    two = 0
    for sc, (image, truth) in zip(scenes, frames):
        xs = [x for _, (x, _) in sc.parts]
        assert xs == sorted(xs, reverse=True)  # downstream first
        # consecutive parts keep the spacing: a part's width plus 40..160 px of belt
        assert all(300 * k + 40 * k - 1e-6 <= a - b <= 300 * k + 160 * k + 1e-6 for a, b in zip(xs, xs[1:]))
        inside = [x for x in xs if lo <= x <= hi]
        assert len(inside) <= 1
        if inside:
            assert truth.part_id == sc.part_id and sc.position[0] == inside[0] and truth.answers == sc.spec.answers()
        else:
            assert truth.part_id is None and sc.spec is None and not any(truth.answers.values())
        # a leaving part and an entering one in the same frame
        two += any(x + 150 * k > SIZE[0] for x in xs) and any(x - 150 * k < 0 for x in xs)
    assert two > 20
    # every part is labelled on consecutive frames, and the belt moves at one speed
    ids = [t.part_id for _, t in frames]
    labelled = [pid for pid in dict.fromkeys(ids) if pid is not None]
    assert len(labelled) >= 4
    for pid in labelled:
        idx = [i for i, p in enumerate(ids) if p == pid]
        assert idx == list(range(idx[0], idx[-1] + 1))
        if 0 < idx[0] and idx[-1] < len(ids) - 1:  # not cut by the recording's ends
            assert 7 <= len(idx) <= 15
    speeds = {round(b.position[0] - a.position[0], 6) for a, b in zip(scenes, scenes[1:])
              if a.part_id is not None and a.part_id == b.part_id}
    assert len(speeds) == 1
    # same seed, same frames
    again = SynthCamera("line-a", "line-a-cam1", 3, ["bracket", "housing"], spacing=synth.CLOSE_SPACING)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(frames[:20], again.frames(20)))


def test_close_together_draws_what_it_labels():
    cam = SynthCamera("line-c", "line-c-cam2", 5, ["panel", "bracket"], spacing=(20.0, 40.0))
    scenes = list(SynthCamera("line-c", "line-c-cam2", 5, ["panel", "bracket"], spacing=(20.0, 40.0)).scenes(30))
    noise = np.random.default_rng([5, synth.stable_hash("line-c-cam2"), 1])  # the camera's noise stream
    half = (synth.PART_WIDTH / 2 + 12) * cam.scale
    for sc, (image, _) in zip(scenes, cam.frames(30)):
        state = noise.bit_generator.state
        assert np.array_equal(image, synth.render_parts_frame(sc.parts, noise, sc.look, SIZE))
        noise.bit_generator.state = state
        empty = synth.render_parts_frame([], noise, sc.look, SIZE)
        changed = np.abs(image.astype(int) - empty.astype(int)).max(axis=2).max(axis=0) > 0
        drawn = np.zeros(SIZE[0], bool)
        for _, (x, _y) in sc.parts:
            drawn[int(max(0, x - half)) : int(max(0, min(SIZE[0], x + half + 8 * cam.scale)))] = True
            if 0 < x < SIZE[0]:
                assert changed[int(x)]  # every part in view is drawn where it is
        assert not (changed & ~drawn).any()  # and nothing else


def test_bad_spacing_is_refused():
    with pytest.raises(ValueError):
        SynthCamera("line-a", "c", 0, ["bracket"], spacing=(-5.0, 10.0))
    with pytest.raises(ValueError):
        SynthCamera("line-a", "c", 0, ["bracket"], spacing=(60.0, 40.0))


def test_synth_command_renders_parts_close_together(tmp_path):
    from ingest.synth_cli import app

    result = CliRunner().invoke(app, ["--out", str(tmp_path / "a"), "--lines", "1", "--cameras", "1", "--frames", "4",
                                      "--width", "320", "--height", "240", "--close-together"])
    assert result.exit_code == 0, result.output
    assert Recording(tmp_path / "a" / "line-a" / "line-a-cam1").meta.source.endswith("spacing=40-160")
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "b"), "--lines", "1", "--cameras", "1", "--frames", "4",
                                      "--width", "320", "--height", "240", "--spacing", "60-80"])
    assert result.exit_code == 0, result.output
    assert Recording(tmp_path / "b" / "line-a" / "line-a-cam1").meta.source.endswith("spacing=60-80")
    bad = CliRunner().invoke(app, ["--out", str(tmp_path / "c"), "--frames", "4", "--spacing", "near"])
    assert bad.exit_code == 2 and "MIN-MAX" in bad.output
    # without the option the recording says nothing about spacing, as before
    plain = synth.write_recordings(tmp_path / "d", lines=1, cameras=1, frames=2, size=(320, 240))
    assert Recording(plain[0]).meta.source == "synth seed=0 defect_rate=0.25"


# --- injected drift ------------------------------------------------------------------------


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("kind", synth.DRIFT_KINDS)
def test_drift_changes_the_frames_from_its_start_only_and_keeps_the_truth(kind):
    plain = list(SynthCamera("line-a", "cam1", 3, ["bracket"], size=(320, 240)).frames(16))
    drifted = list(SynthCamera("line-a", "cam1", 3, ["bracket"], size=(320, 240),
                               drift=synth.SynthDrift(kind, start=8, strength=0.8)).frames(16))
    for n, ((a, truth_a), (b, truth_b)) in enumerate(zip(plain, drifted)):
        assert truth_a == truth_b
        assert np.array_equal(a, b) == (n < 8), n
    after = [(a, b) for (a, _), (b, _) in zip(plain[8:], drifted[8:])]
    if kind == "lighting":
        assert all(b.mean() < 0.6 * a.mean() for a, b in after)
    elif kind == "blur":
        assert all(_sharpness(b) < 0.2 * _sharpness(a) for a, b in after)
    else:  # the view moved: the scene is where it was, displaced by the shift
        a, b = after[0]
        m = cv2.getRotationMatrix2D((160, 120), 6.0 * 0.8, 1.0)
        m[:, 2] += (0.12 * 0.8 * 320, 0.08 * 0.8 * 240)
        moved = cv2.warpAffine(a, m, (320, 240), borderMode=cv2.BORDER_REPLICATE)
        inner = (slice(40, 200), slice(60, 260))
        assert np.abs(b[inner].astype(int) - moved[inner]).mean() < 1.0 < np.abs(b[inner].astype(int) - a[inner]).mean()


def test_synth_command_injects_drift_and_names_it_in_the_recording(tmp_path):
    from ingest.synth_cli import app

    args = ["--lines", "1", "--cameras", "1", "--frames", "6", "--width", "320", "--height", "240"]
    clean = CliRunner().invoke(app, ["--out", str(tmp_path / "clean"), *args])
    dim = CliRunner().invoke(app, ["--out", str(tmp_path / "dim"), *args, "--drift", "lighting", "--drift-strength", "0.5"])
    assert clean.exit_code == 0 and dim.exit_code == 0, dim.output
    a, b = Recording(tmp_path / "clean/line-a/line-a-cam1"), Recording(tmp_path / "dim/line-a/line-a-cam1")
    assert b.meta.source.endswith("drift=lighting@3x0.5")  # default start: half the frames
    assert [ja == jb for (_, ja), (_, jb) in zip(a.frames(), b.frames())] == [True] * 3 + [False] * 3
    bad = CliRunner().invoke(app, ["--out", str(tmp_path / "bad"), *args, "--drift", "fog"])
    assert bad.exit_code == 2 and "unknown drift 'fog'" in bad.output and not (tmp_path / "bad").exists()
