"""The fabric family draws what its labels say, the same way for the same seed, and only inside the inspected field."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ingest import fabric
from ingest.fabric import FABRIC_DEFECTS, SMALL_DEFECTS, FabricCamera, SheetSpec, defect_boxes, render_sheet
from ingest.recording import Recording

SIZE = fabric.FABRIC_SIZE


def test_a_sheet_renders_the_same_for_the_same_seed_and_differently_for_another():
    spec = SheetSpec("denim", seed=11, defects=("hole", "stain"), angle=1.0)
    assert np.array_equal(render_sheet(spec), render_sheet(spec))
    assert not np.array_equal(render_sheet(spec), render_sheet(spec.replace(seed=12)))
    a = [(img, t) for img, t in FabricCamera("fabric-a", "fabric-a-cam1", 4, ["linen"]).frames(6)]
    b = [(img, t) for img, t in FabricCamera("fabric-a", "fabric-a-cam1", 4, ["linen"]).frames(6)]
    c = [img for img, _ in FabricCamera("fabric-a", "fabric-a-cam1", 5, ["linen"]).frames(6)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not np.array_equal(a[0][0], c[0])


def test_the_weave_is_a_texture_not_a_flat_colour():
    sheet = render_sheet(SheetSpec("canvas", seed=3))
    grey = cv2.cvtColor(np.clip(sheet, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float32)
    # strands and the gaps between them: strong contrast at the thread pitch (6 px), none at 64 px
    fine = np.abs(np.diff(grey, axis=1)).mean()
    coarse = np.abs(np.diff(cv2.resize(grey, (grey.shape[1] // 64, grey.shape[0] // 64),
                                       interpolation=cv2.INTER_AREA), axis=1)).mean()
    assert fine > 15 and coarse < 4, (fine, coarse)


@pytest.mark.parametrize("defect", FABRIC_DEFECTS)
def test_a_defect_changes_the_sheet_inside_its_box_only(defect):
    for seed in (1, 2, 3):
        clean = SheetSpec("denim" if seed % 2 else "linen", seed=seed, angle=2.0 * seed - 4)
        diff = np.abs(render_sheet(clean.replace(defects=(defect,))) - render_sheet(clean)).max(axis=2)
        x0, y0, x1, y1 = defect_boxes(clean.replace(defects=(defect,)))[defect]
        inside = np.zeros(diff.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert diff[~inside].max() == 0, "the defect drew outside its box"
        assert diff[inside].max() > 60, "the defect is not visible"
        changed = int((diff > 20).sum())
        if defect in SMALL_DEFECTS:  # a few pixels wide: at most a few hundred pixels changed
            assert 10 < changed < 600 and max(x1 - x0, y1 - y0) <= 62, (changed, (x0, y0, x1, y1))
        else:
            assert changed > 1500, changed
        # what a 128 px encoder sees of a frame (shortest edge to 128, central square): the defect is still there
        assert np.abs(encoder_view(clean.replace(defects=(defect,))) - encoder_view(clean)).max() > 60


def encoder_view(spec: SheetSpec) -> np.ndarray:
    frame = np.clip(render_sheet(spec), 0, 255).astype(np.uint8)[:, 20 : 20 + SIZE[0]]
    return cv2.resize(frame, (171, 128), interpolation=cv2.INTER_CUBIC)[:, 21:149].astype(int)


def test_defects_stay_inside_the_inspected_square_at_every_frame_of_the_sheet():
    # a frame crops the sheet at an offset in [0, travel]: the box must hold for every offset
    for size in (SIZE, (640, 480), (320, 320)):
        x0, y0, x1, y1 = fabric.inspected_box(size)
        side = min(size)
        travel = fabric.sheet_size(size)[0] - size[0]
        assert x0 == (size[0] - side) / 2 + travel and x1 == (size[0] + side) / 2
        for seed in range(20):
            spec = SheetSpec("canvas", seed=seed, defects=FABRIC_DEFECTS)
            for bx0, by0, bx1, by1 in defect_boxes(spec, size).values():
                assert x0 - 1 <= bx0 and bx1 <= x1 + 1 and y0 - 1 <= by0 and by1 <= y1 + 1, (size, seed)


def test_truth_per_frame_is_the_sheet_it_shows():
    cam = FabricCamera("fabric-a", "fabric-a-cam1", 0, ["denim", "linen"], defect_rate=0.5)
    frames = list(cam.frames(60))
    sheets: dict[int, list] = {}
    for image, truth in frames:
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
        assert truth.part_id is not None and truth.part_type in ("denim", "linen")
        assert truth.answers == {"defect": bool(truth.defects)}
        assert set(truth.defects) <= set(FABRIC_DEFECTS)
        sheets.setdefault(truth.part_id, []).append(truth)
    ids = [t.part_id for _, t in frames]
    assert ids == sorted(ids) and set(ids) == set(range(1, max(ids) + 1))  # sheet after sheet, none skipped
    assert all(1 <= len(seen) <= 3 for seen in list(sheets.values())[:-1])
    assert all(t == seen[0] for seen in sheets.values() for t in seen)
    defective = sum(bool(seen[0].defects) for seen in sheets.values())
    assert 0.2 < defective / len(sheets) < 0.8
    # the same sheet on its next frame: the conveyor moved it to the left, lit alike
    first, second = next((a, b) for (a, ta), (b, tb) in zip(frames, frames[1:]) if ta.part_id == tb.part_id)
    assert not np.array_equal(first, second)


def test_recordings_say_what_they_are_and_replay_byte_for_byte(tmp_path):
    kwargs = dict(lines=2, cameras=1, frames=6, seed=3, size=(256, 192), defect_types=SMALL_DEFECTS, defect_rate=1.0)
    a = fabric.write_fabric_recordings(tmp_path / "a", **kwargs)
    b = fabric.write_fabric_recordings(tmp_path / "b", **kwargs)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in a] == ["fabric-a/fabric-a-cam1", "fabric-b/fabric-b-cam1"]
    for pa, pb in zip(a, b):
        assert (pa / "frames.bin").read_bytes() == (pb / "frames.bin").read_bytes()
        rec = Recording(pa)
        assert rec.meta.width == 256 and rec.meta.product == "fabric"
        assert rec.meta.source == "synth fabric seed=3 defect_rate=1.0 defects=hole,pulled_thread,knot"
        assert [q["id"] for q in rec.meta.questions] == ["defect"]
        for entry, jpeg in rec.frames():
            assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (192, 256, 3)
            assert entry.truth.defects and set(entry.truth.defects) <= set(SMALL_DEFECTS)
    assert Recording(a[1]).meta.part_types == ["linen"]


def test_synth_command_renders_fabric(tmp_path):
    from ingest.synth_cli import app

    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--product", "fabric", "--lines", "1", "--frames", "4",
                                      "--defect-types", "large", "--defect-rate", "1"])
    assert result.exit_code == 0, result.output
    rec = Recording(tmp_path / "fabric-a" / "fabric-a-cam1")
    assert (rec.meta.width, rec.meta.height) == SIZE
    assert all(set(e.truth.defects) <= {"stain", "weave_fault"} and e.truth.defects for e in rec.entries)


@pytest.mark.parametrize("args, message", [
    (["--product", "cloth"], "--product is parts or fabric"),
    (["--product", "fabric", "--defect-types", "hole,tear"], "unknown fabric defect tear"),
    (["--product", "fabric", "--drift", "blur"], "are for --product parts"),
    (["--defect-types", "small"], "is for --product fabric"),
])
def test_bad_fabric_arguments_are_refused_before_anything_is_written(tmp_path, args, message):
    from ingest.synth_cli import app

    result = CliRunner().invoke(app, ["--out", str(tmp_path / "out"), "--frames", "2", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown fabric"):
        SheetSpec("velvet")
    with pytest.raises(ValueError, match="no room for a defect"):
        FabricCamera("fabric-a", "c", 0, ["denim"], size=(900, 200))
