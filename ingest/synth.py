"""A synthetic production line: parts on a conveyor, drawn with OpenCV, with exact ground truth.

It exists so that the model, the pipeline and the alerts can be trained, tested and
demonstrated end to end without a factory. Every part carries the same features, so
every catalog question has a known answer on every frame:

* a body whose outline and material depend on the part type, with a chamfered corner
  and a printed arrow that say which way is up;
* four corner screws, a row of through-holes (four when correct), a label (right half
  when correct), and a chip with a connector beside it (connector right of the chip
  when correct).

Defects exercise what an encoder-plus-MLLM inspector is about (Li, Koh, Du 2024):

* fine detail: ``scratch``, ``crack``, ``stain``, ``missing_screw`` (an empty screw position);
* spatial relations: ``label_left`` (label on the wrong side), ``part_flipped`` (mounted
  upside down: arrow down, chamfer at the bottom), ``connector_left`` (connector on the
  wrong side of the chip);
* counting: ``hole_count`` (three or five holes instead of four);
* a relation between two features that no caption states: ``label_near_gap`` (the empty
  screw position is on the label's side of the part). It is asked in evaluation only.

Scale. Frames are 640x480 by default. The encoder, like any CLIP, resizes the shortest
edge and keeps the central square, so a part is in view (and labelled) only while it lies
wholly inside the central 480x480 square, which the encoder sees at 128x128: a factor of
3.75. A 1-pixel scratch at encoder resolution was not learned at all in an earlier probe,
so every fine feature is drawn at least 5 px wide at 640 (about 1.5 px in the encoder)
and with strong contrast against the body: scratches are a 9 px dark gouge with a 5 px
bright core, cracks 6 px with a branch, screws 28 px across, holes 24 px.

Determinism. ``PartSpec`` holds everything that decides how a part looks, including a
``seed`` for the texture and defect geometry, whose random draws happen in a fixed order
whatever defects are present. Two specs that differ in one property therefore render to
two frames that differ only in that property: the image pairs of pair accuracy. Camera
noise, lighting drift, motion blur and belt motion come from the ``rng`` and ``CameraLook``
passed to ``render_part_frame``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import cv2
import numpy as np

from ingest.recording import FrameTruth, RecordingMeta, RecordingWriter
from schemas.config import Question, QuestionCategory

BASE_WIDTH = 640  # the layout below is in pixels of a 640-wide frame; other sizes scale it

# --- The question catalog -------------------------------------------------------------


def _q(id: str, text: str, category: QuestionCategory, positive: str, negative: str) -> Question:
    return Question(
        id=id, text=text, defect_type=id, category=category, clip_positive=positive, clip_negative=negative
    )


C = QuestionCategory
SYNTH_QUESTIONS: list[Question] = [
    _q("scratch", "Is there a scratch on the part?", C.fine_detail,
       "a photo of a scratched part", "a photo of a clean part without scratches"),
    _q("crack", "Is there a crack in the part?", C.fine_detail,
       "a photo of a cracked part", "a photo of an intact part without cracks"),
    _q("stain", "Is there a stain or discoloration on the part?", C.fine_detail,
       "a photo of a part with a stain", "a photo of a clean part without stains"),
    _q("missing_screw", "Is a screw missing from the part?", C.fine_detail,
       "a photo of a part with a missing screw", "a photo of a part with all screws in place"),
    _q("label_left", "Is the label on the left side of the part?", C.spatial,
       "a part with the label on the left side", "a part with the label on the right side"),
    _q("part_flipped", "Is the part mounted upside down?", C.spatial,
       "an upside down part with the arrow pointing down", "an upright part with the arrow pointing up"),
    _q("connector_left", "Is the connector to the left of the chip?", C.spatial,
       "a part with the connector left of the chip", "a part with the connector right of the chip"),
    _q("hole_count", "Does the part have a number of holes other than four?", C.counting,
       "a part with three or five holes", "a part with four holes"),
    _q("label_near_gap", "Is the label next to the empty screw position?", C.relation,
       "a part with the label next to an empty screw hole", "a part with the label away from any empty screw hole"),
]
DEFECT_TYPES = [q.id for q in SYNTH_QUESTIONS if q.category != C.relation]
# Relation questions are never stated by captions or trained on: they measure generalisation.
EVAL_ONLY_QUESTIONS = [q.id for q in SYNTH_QUESTIONS if q.category == C.relation]
ALERT_QUESTIONS = [q for q in SYNTH_QUESTIONS if q.id not in EVAL_ONLY_QUESTIONS]

# --- Parts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartType:
    name: str
    shape: Literal["rect", "rounded"]
    material: str  # caption words
    colour: str
    body_bgr: tuple[int, int, int]
    texture: Literal["brushed", "traces", "matte"]
    height: int  # body height in base pixels; the width is always 300


PART_TYPES: dict[str, PartType] = {
    p.name: p
    for p in (
        PartType("bracket", "rect", "steel", "grey", (150, 148, 142), "brushed", 200),
        PartType("housing", "rounded", "plastic", "black", (58, 56, 54), "matte", 210),
        PartType("board", "rect", "fibreglass", "green", (48, 112, 34), "traces", 196),
        PartType("cover", "rounded", "plastic", "orange", (40, 118, 222), "matte", 204),
        PartType("panel", "rect", "aluminium", "blue", (176, 140, 96), "brushed", 206),
    )
}
# Which part types each demo line makes; lines beyond these cycle through them.
LINE_PART_TYPES: dict[str, list[str]] = {
    "line-a": ["bracket", "housing"],
    "line-b": ["board", "cover"],
    "line-c": ["panel", "bracket"],
}

# Corner order of screw positions: top-left, top-right, bottom-left, bottom-right.
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")

# Distinct colours make the drawing checkable pixel by pixel in tests (see tests/ingest/test_synth.py).
LABEL_BGR = (236, 238, 240)
LABEL_INK_BGR = (70, 60, 60)
HOLE_BGR = (16, 16, 18)
HOLE_RIM_BGR = (96, 96, 100)
SCREW_BGR = (214, 212, 206)
SCREW_SLOT_BGR = (90, 90, 92)
GAP_BGR = (30, 28, 26)
GAP_RIM_BGR = (132, 128, 124)
CHIP_BGR = (44, 40, 40)
CHIP_PIN_BGR = (190, 190, 196)
CONNECTOR_BGR = (150, 222, 240)
ARROW_BGR = (24, 24, 200)
STAIN_BGR = (34, 70, 112)

# Layout, in base pixels from the part centre (u right, v down).
PART_WIDTH = 300
LABEL_CENTRE = (78, -30)
LABEL_SIZE = (80, 52)
CHIP_CENTRE = (0, 26)
CHIP_SIZE = 44
CONNECTOR_OFFSET = 58
CONNECTOR_SIZE = (18, 50)
HOLE_ROW_V = 72
HOLE_SPACING = 38
HOLE_RADIUS = 12
SCREW_RADIUS = 14
ARROW_CENTRE = (0, -60)
ARROW_SIZE = 34
CHAMFER = 44


@dataclass(frozen=True)
class PartSpec:
    """Everything that decides how one part looks. ``replace`` one property to make a pair."""

    part_type: str
    seed: int = 0  # texture and defect geometry
    scratch: bool = False
    crack: bool = False
    stain: bool = False
    missing_screw: str | None = None  # the empty screw position: one of CORNERS
    label_side: Literal["left", "right"] = "right"
    flipped: bool = False
    connector_side: Literal["left", "right"] = "right"
    holes: int = 4
    angle: float = 0.0  # mounting jitter, degrees

    def __post_init__(self) -> None:
        if self.part_type not in PART_TYPES:
            raise ValueError(f"unknown part type {self.part_type!r}; known: {sorted(PART_TYPES)}")
        if self.missing_screw is not None and self.missing_screw not in CORNERS:
            raise ValueError(f"missing_screw must be one of {CORNERS}, got {self.missing_screw!r}")
        if not 1 <= self.holes <= 6:
            raise ValueError(f"holes must be 1..6, got {self.holes}")

    @property
    def label_near_gap(self) -> bool:
        # "Next to" means on the same side of the part: the label spans the upper half of its side.
        return self.missing_screw is not None and self.missing_screw.endswith(self.label_side)

    @property
    def defects(self) -> list[str]:
        """Defect types present; relations between features are answers, not defects of their own."""
        return [d for d, present in self.answers().items() if present and d in DEFECT_TYPES]

    def answers(self) -> dict[str, bool]:
        """The correct answer to every catalog question ("yes" means defect)."""
        return {
            "scratch": self.scratch,
            "crack": self.crack,
            "stain": self.stain,
            "missing_screw": self.missing_screw is not None,
            "label_left": self.label_side == "left",
            "part_flipped": self.flipped,
            "connector_left": self.connector_side == "left",
            "hole_count": self.holes != 4,
            "label_near_gap": self.label_near_gap,
        }

    def replace(self, **changes: object) -> "PartSpec":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def set_defect(spec: PartSpec, defect: str, rng: np.random.Generator | None = None) -> PartSpec:
    """``spec`` with ``defect`` present; ``rng`` picks which corner or hole count where there is a choice."""
    rng = rng or np.random.default_rng(spec.seed)
    if defect in ("scratch", "crack", "stain"):
        return spec.replace(**{defect: True})
    if defect == "missing_screw":
        return spec.replace(missing_screw=CORNERS[int(rng.integers(4))])
    if defect == "label_left":
        return spec.replace(label_side="left")
    if defect == "part_flipped":
        return spec.replace(flipped=True)
    if defect == "connector_left":
        return spec.replace(connector_side="left")
    if defect == "hole_count":
        return spec.replace(holes=int(rng.choice([3, 5])))
    if defect == "label_near_gap":
        side = spec.label_side
        return spec.replace(missing_screw=f"{rng.choice(['top', 'bottom'])}_{side}")
    raise ValueError(f"unknown defect {defect!r}; known: {DEFECT_TYPES + EVAL_ONLY_QUESTIONS}")


def clear_defect(spec: PartSpec, defect: str, rng: np.random.Generator | None = None) -> PartSpec:
    """``spec`` without ``defect`` (for a relation, the gap moves to the other side)."""
    rng = rng or np.random.default_rng(spec.seed)
    if defect in ("scratch", "crack", "stain"):
        return spec.replace(**{defect: False})
    if defect == "missing_screw":
        return spec.replace(missing_screw=None)
    if defect == "label_left":
        return spec.replace(label_side="right")
    if defect == "part_flipped":
        return spec.replace(flipped=False)
    if defect == "connector_left":
        return spec.replace(connector_side="right")
    if defect == "hole_count":
        return spec.replace(holes=4)
    if defect == "label_near_gap":
        other = "left" if spec.label_side == "right" else "right"
        return spec.replace(missing_screw=f"{rng.choice(['top', 'bottom'])}_{other}")
    raise ValueError(f"unknown defect {defect!r}")


def sample_part(
    rng: np.random.Generator, part_type: str, defect_rate: float = 0.25, *, max_angle: float = 4.0
) -> PartSpec:
    """A random part: with probability ``defect_rate`` it has one defect (sometimes two)."""
    spec = PartSpec(part_type=part_type, seed=int(rng.integers(2**31)), angle=float(rng.uniform(-max_angle, max_angle)))
    if rng.random() < defect_rate:
        n = 2 if rng.random() < 0.15 else 1
        for defect in rng.choice(DEFECT_TYPES, size=n, replace=False):
            spec = set_defect(spec, str(defect), rng)
    return spec


# --- Drawing --------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraLook:
    """How a camera sees the belt at one instant: the nuisances the model must ignore."""

    scale: float = 1.0  # zoom relative to the base layout
    belt_bgr: tuple[int, int, int] = (92, 96, 98)
    belt_phase: float = 0.0  # belt stripe offset in pixels: the belt moves even when empty
    brightness: float = 1.0  # lighting gain
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain (colour temperature)
    vignette: float = 0.0  # darkening at the frame edges, 0..1
    noise_sigma: float = 0.0  # sensor noise, grey levels
    blur_px: int = 0  # horizontal motion blur length


CLEAN_LOOK = CameraLook()


def _body_polygon(spec: PartSpec, s: float, c: tuple[float, float]) -> np.ndarray:
    """The body outline, clockwise on screen, with the mark that says which way is up."""
    ptype = PART_TYPES[spec.part_type]
    hw, hh = PART_WIDTH / 2, ptype.height / 2
    pts: list[tuple[float, float]]
    if ptype.shape == "rect":
        # A chamfered corner marks "up": top-left when mounted correctly, bottom-left when flipped.
        if spec.flipped:
            pts = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw + CHAMFER, hh), (-hw, hh - CHAMFER)]
        else:
            pts = [(-hw, -hh + CHAMFER), (-hw + CHAMFER, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
    else:
        # A rounded body has no sharp corner to cut: a notch high (or, flipped, low) in its left edge.
        r = 30.0
        pts = []
        for cu, cv_, start in ((-hw + r, -hh + r, 180), (hw - r, -hh + r, 270), (hw - r, hh - r, 0), (-hw + r, hh - r, 90)):
            for a in range(start, start + 91, 10):
                pts.append((cu + r * math.cos(math.radians(a)), cv_ + r * math.sin(math.radians(a))))
        nv = (hh - 50) if spec.flipped else (-hh + 50)
        pts += [(-hw, nv + 16), (-hw + 22, nv), (-hw, nv - 16)]  # up the left edge, back to the start
    return np.array([[c[0] + u * s, c[1] + v * s] for u, v in pts], dtype=np.float32)


def _p(c: tuple[float, float], s: float, u: float, v: float) -> tuple[int, int]:
    return int(round(c[0] + u * s)), int(round(c[1] + v * s))


def _rect(img: np.ndarray, c, s, centre, size, colour, thickness=-1) -> None:  # type: ignore[no-untyped-def]
    (u, v), (w, h) = centre, size
    cv2.rectangle(img, _p(c, s, u - w / 2, v - h / 2), _p(c, s, u + w / 2, v + h / 2), colour, thickness, cv2.LINE_AA)


@functools.lru_cache(maxsize=64)
def render_part(spec: PartSpec, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The part alone, upright and unlit: ``(bgr, mask)`` on a canvas just big enough to hold it.

    Cached: a part looks the same on every frame of its passage; only the camera changes.
    """
    ptype = PART_TYPES[spec.part_type]
    s = scale
    pad = 8
    w = int(math.ceil(PART_WIDTH * s)) + 2 * pad
    h = int(math.ceil(ptype.height * s)) + 2 * pad
    c = (w / 2, h / 2)
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    poly = _body_polygon(spec, s, c)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255, cv2.LINE_AA)
    img[:] = ptype.body_bgr
    # Geometry draws come from one stream in a fixed order, whatever is present, so that
    # toggling one property leaves every other pixel where it was.
    g = np.random.default_rng(spec.seed)
    texture = g.uniform(0, 1, size=(40, 4))
    scratch = g.uniform(0, 1, size=6)
    crack = g.uniform(0, 1, size=16)
    stain = g.uniform(0, 1, size=5)

    _draw_texture(img, ptype, texture, c, s)
    cv2.polylines(img, [np.round(poly).astype(np.int32)], True, tuple(int(x * 0.6) for x in ptype.body_bgr), max(1, int(2 * s)), cv2.LINE_AA)

    # Orientation arrow: points up when mounted correctly.
    au, av = ARROW_CENTRE
    a = ARROW_SIZE / 2
    tip, base = (-a, a) if not spec.flipped else (a, -a)
    tri = np.array([_p(c, s, au, av + tip), _p(c, s, au - a * 0.8, av + base * 0.2), _p(c, s, au + a * 0.8, av + base * 0.2)], np.int32)
    cv2.fillPoly(img, [tri], ARROW_BGR, cv2.LINE_AA)
    _rect(img, c, s, (au, av + base * 0.6), (a * 0.7, a * 0.8), ARROW_BGR)

    # Label with print on it.
    lu = LABEL_CENTRE[0] * (1 if spec.label_side == "right" else -1)
    lv = LABEL_CENTRE[1]
    _rect(img, c, s, (lu, lv), LABEL_SIZE, LABEL_BGR)
    for i, frac in enumerate((0.75, 0.5)):
        y = lv - LABEL_SIZE[1] / 2 + 10 + 9 * i
        cv2.line(img, _p(c, s, lu - 32, y), _p(c, s, lu - 32 + 64 * frac, y), LABEL_INK_BGR, max(1, int(3 * s)))
    for k in range(9):
        x = lu - 30 + 7 * k
        cv2.line(img, _p(c, s, x, lv + 6), _p(c, s, x, lv + 20), LABEL_INK_BGR, max(1, int((2 + k % 2) * s)))

    # Chip with pins, and its connector.
    cu, cv_ = CHIP_CENTRE
    for k in range(4):
        y = cv_ - 15 + 10 * k
        cv2.line(img, _p(c, s, cu - 28, y), _p(c, s, cu + 28, y), CHIP_PIN_BGR, max(1, int(2 * s)))
    _rect(img, c, s, (cu, cv_), (CHIP_SIZE, CHIP_SIZE), CHIP_BGR)
    ku = CONNECTOR_OFFSET * (1 if spec.connector_side == "right" else -1)
    _rect(img, c, s, (ku, cv_), CONNECTOR_SIZE, CONNECTOR_BGR)
    for k in range(4):
        cv2.circle(img, _p(c, s, ku, cv_ - 16 + 11 * k), max(1, int(3 * s)), SCREW_SLOT_BGR, -1, cv2.LINE_AA)

    # Through-holes: four, evenly spaced, along the bottom edge.
    for k in range(spec.holes):
        u = (k - (spec.holes - 1) / 2) * HOLE_SPACING
        cv2.circle(img, _p(c, s, u, HOLE_ROW_V), int(round((HOLE_RADIUS + 3) * s)), HOLE_RIM_BGR, -1, cv2.LINE_AA)
        cv2.circle(img, _p(c, s, u, HOLE_ROW_V), int(round(HOLE_RADIUS * s)), HOLE_BGR, -1, cv2.LINE_AA)

    # Corner screws; the missing one leaves a dark threaded hole.
    su, sv = PART_WIDTH / 2 - 24, ptype.height / 2 - 24
    for name, (u, v) in zip(CORNERS, ((-su, -sv), (su, -sv), (-su, sv), (su, sv))):
        centre = _p(c, s, u, v)
        if name == spec.missing_screw:
            cv2.circle(img, centre, int(round(9 * s)), GAP_RIM_BGR, -1, cv2.LINE_AA)
            cv2.circle(img, centre, int(round(6 * s)), GAP_BGR, -1, cv2.LINE_AA)
        else:
            cv2.circle(img, centre, int(round(SCREW_RADIUS * s)), SCREW_BGR, -1, cv2.LINE_AA)
            cv2.circle(img, centre, int(round(SCREW_RADIUS * s)), SCREW_SLOT_BGR, max(1, int(2 * s)), cv2.LINE_AA)
            d = SCREW_RADIUS * 0.6
            cv2.line(img, _p(c, s, u - d, v), _p(c, s, u + d, v), SCREW_SLOT_BGR, max(1, int(3 * s)))
            cv2.line(img, _p(c, s, u, v - d), _p(c, s, u, v + d), SCREW_SLOT_BGR, max(1, int(3 * s)))

    # Fine defects, drawn last so that they cross whatever they land on.
    _draw_defects(img, spec, ptype, stain, scratch, crack, c, s)
    img[mask == 0] = 0
    return img, mask


def _draw_texture(img: np.ndarray, ptype: PartType, texture: np.ndarray, c: tuple[float, float], s: float) -> None:
    """The body's surface: brushed lines or circuit traces, from the part's own draws."""
    shade = np.array(ptype.body_bgr, np.float32)
    if ptype.texture == "brushed":
        for a, b, _, d in texture:
            v = -ptype.height / 2 + a * ptype.height
            tone = tuple(int(x) for x in np.clip(shade * (0.9 + 0.2 * d), 0, 255))
            cv2.line(img, _p(c, s, -PART_WIDTH / 2, v), _p(c, s, PART_WIDTH / 2, v + 4 * (b - 0.5)), tone, 1, cv2.LINE_AA)
    elif ptype.texture == "traces":
        trace = tuple(int(x) for x in np.clip(shade * 1.35, 0, 255))
        for a, b, cc, d in texture[:14]:
            u0, v0 = -130 + 260 * a, -85 + 170 * b
            u1 = u0 + (cc - 0.5) * 120
            cv2.line(img, _p(c, s, u0, v0), _p(c, s, u1, v0), trace, max(1, int(2 * s)), cv2.LINE_AA)
            cv2.line(img, _p(c, s, u1, v0), _p(c, s, u1, v0 + (d - 0.5) * 80), trace, max(1, int(2 * s)), cv2.LINE_AA)


def _draw_defects(
    img: np.ndarray, spec: PartSpec, ptype: PartType, stain: np.ndarray, scratch: np.ndarray, crack: np.ndarray,
    c: tuple[float, float], s: float,
) -> None:
    """The stain, the scratch and the crack the spec has, each from its own draws."""
    dark_body = sum(ptype.body_bgr) / 3 < 110
    if spec.stain:
        u, v = -100 + 200 * stain[0], -60 + 120 * stain[1]
        axes = (int((30 + 18 * stain[2]) * s), int((22 + 14 * stain[3]) * s))
        over = img.copy()
        colour = (150, 170, 190) if dark_body else STAIN_BGR
        cv2.ellipse(over, _p(c, s, u, v), axes, 180 * stain[4], 0, 360, colour, -1, cv2.LINE_AA)
        cv2.addWeighted(over, 0.7, img, 0.3, 0, dst=img)
    if spec.scratch:
        u0, v0 = -110 + 120 * scratch[0], -70 + 140 * scratch[1]
        ang = math.pi * scratch[2]
        length = 110 + 50 * scratch[3]
        bend = (scratch[4] - 0.5) * 30
        pts = []
        for t in np.linspace(0, 1, 8):
            du, dv = math.cos(ang) * length * t, math.sin(ang) * length * t
            off = bend * math.sin(math.pi * t)
            pts.append(_p(c, s, u0 + du - math.sin(ang) * off, v0 + dv + math.cos(ang) * off))
        pts_a = np.array(pts, np.int32)
        # a bright gouge with a dark edge reads on light and dark bodies alike
        cv2.polylines(img, [pts_a], False, (40, 40, 40), max(2, int(round(9 * s))), cv2.LINE_AA)
        cv2.polylines(img, [pts_a], False, (250, 250, 250), max(1, int(round(5 * s))), cv2.LINE_AA)
    if spec.crack:
        # from a point on the top or bottom edge, zig-zagging inward, with one branch
        hh = ptype.height / 2
        u = -90 + 180 * crack[0]
        v = -hh if crack[1] < 0.5 else hh
        inward = 1 if v < 0 else -1
        pts = [(u, v)]
        for k in range(6):
            u += (crack[2 + k] - 0.5) * 34
            v += inward * (14 + 10 * crack[8 + k])
            pts.append((u, v))
        colour = (225, 225, 225) if dark_body else (20, 20, 20)
        path = np.array([_p(c, s, *q) for q in pts], np.int32)
        cv2.polylines(img, [path], False, colour, max(2, int(round(6 * s))), cv2.LINE_AA)
        bu, bv = pts[3]
        branch = np.array([_p(c, s, bu, bv), _p(c, s, bu + 30 * (crack[14] - 0.5) + 18, bv + inward * 24)], np.int32)
        cv2.polylines(img, [branch], False, colour, max(2, int(round(4 * s))), cv2.LINE_AA)


@functools.lru_cache(maxsize=8)
def noise_bank(height: int, width: int) -> np.ndarray:
    # One fixed field of unit noise; each frame reads it at a random offset. Drawing fresh
    # Gaussian noise for every 640x480 frame would cost more than all the drawing.
    return np.random.default_rng(0x5EED).standard_normal((height + 64, width + 64, 3), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def vignette_map(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    return (r2 / 2)[..., None]


def render_belt(look: CameraLook, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    k = width / BASE_WIDTH
    img = np.empty((height, width, 3), np.uint8)
    img[:] = look.belt_bgr
    dark = tuple(int(v * 0.8) for v in look.belt_bgr)
    pitch = 48 * k
    x = (look.belt_phase * k) % pitch
    while x < width:
        cv2.line(img, (int(x), 0), (int(x), height), dark, max(1, int(3 * k)))
        x += pitch
    rail = tuple(int(v * 0.55) for v in look.belt_bgr)
    cv2.rectangle(img, (0, 0), (width, int(18 * k)), rail, -1)
    cv2.rectangle(img, (0, height - int(18 * k)), (width, height), rail, -1)
    return img


def render_part_frame(
    spec: PartSpec | None,
    rng: np.random.Generator,
    position: tuple[float, float] | None = None,
    look: CameraLook = CLEAN_LOOK,
    size: tuple[int, int] = (640, 480),
) -> np.ndarray:
    """One BGR frame: the belt, ``spec`` centred at ``position`` (pixels; default the frame centre), the camera's nuisances.

    ``spec=None`` renders the empty belt. ``rng`` only picks the noise offset, so the same
    ``rng`` state, ``position`` and ``look`` give the same nuisances for two specs.
    Several parts in one frame: ``render_parts_frame``.
    """
    if spec is None:
        return render_parts_frame((), rng, look, size)
    width, height = size
    return render_parts_frame([(spec, position if position is not None else (width / 2, height / 2))], rng, look, size)


def render_parts_frame(
    parts: Sequence[tuple[PartSpec, tuple[float, float]]],
    rng: np.random.Generator,
    look: CameraLook = CLEAN_LOOK,
    size: tuple[int, int] = (640, 480),
) -> np.ndarray:
    """One BGR frame with every ``(spec, centre)`` of ``parts`` on the belt (none: the empty belt).

    Parts are drawn in order, each with its shadow; a part may lie partly outside the frame
    (entering or leaving the view). One part renders exactly what ``render_part_frame`` does.
    """
    width, height = size
    frame = render_belt(look, size)
    s = look.scale * width / BASE_WIDTH
    for spec, (cx, cy) in parts:
        _draw_part(frame, spec, (cx, cy), s)
    if look.blur_px > 1:
        frame = cv2.blur(frame, (int(look.blur_px), 1))
    gain = np.array(look.tint, np.float32) * look.brightness
    out = frame.astype(np.float32) * gain
    if look.vignette > 0:
        out *= 1.0 - look.vignette * vignette_map(height, width)
    if look.noise_sigma > 0:
        bank = noise_bank(height, width)
        oy, ox = rng.integers(0, 64, size=2)
        out += look.noise_sigma * bank[oy : oy + height, ox : ox + width]
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_part(frame: np.ndarray, spec: PartSpec, centre: tuple[float, float], s: float) -> None:
    """Composite ``spec`` (with its shadow) onto ``frame`` in place, centred at ``centre``."""
    height, width = frame.shape[:2]
    part, mask = render_part(spec, round(s, 4))
    ph, pw = mask.shape
    cx, cy = centre
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), -spec.angle, 1.0)
    m[0, 2] += cx - pw / 2
    m[1, 2] += cy - ph / 2
    # warp only into the part's bounding box in the frame
    diag = math.hypot(pw, ph) / 2 + 2
    x0, y0 = max(0, int(cx - diag)), max(0, int(cy - diag))
    x1, y1 = min(width, int(cx + diag) + 1), min(height, int(cy + diag) + 1)
    if x1 > x0 and y1 > y0:
        m[0, 2] -= x0
        m[1, 2] -= y0
        roi = (x1 - x0, y1 - y0)
        warped = cv2.warpAffine(part, m, roi, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, m, roi, flags=cv2.INTER_LINEAR)
        dst = frame[y0:y1, x0:x1]
        a = alpha[..., None].astype(np.float32) / 255.0
        # soft shadow under the part, so it reads as lying on the belt
        shadow = cv2.warpAffine(mask, m + np.array([[0, 0, 6 * s], [0, 0, 8 * s]]), roi, flags=cv2.INTER_LINEAR)
        sh = 1.0 - 0.35 * shadow[..., None].astype(np.float32) / 255.0
        dst[:] = (dst * sh * (1 - a) + warped * a).astype(np.uint8)


# --- Drift: the line changes after calibration ----------------------------------------------

DRIFT_KINDS = ("lighting", "blur", "shift")


@dataclass(frozen=True)
class SynthDrift:
    """From frame ``start`` on, the camera sees the line changed: what drift monitoring (docs/drift.md) must notice.

    ``lighting``: a lamp dims, the frame darkens to ``1 - 0.6 * strength`` of its light;
    ``blur``: the lens is soiled or out of focus, a Gaussian blur of ``8 * strength`` px sigma;
    ``shift``: the camera was knocked, the view moves by ``strength`` * (12 %, 8 %) of the frame and
    turns by ``6 * strength`` degrees. A step change, as when a lamp fails or a camera is bumped;
    the parts and their labels are unchanged.
    """

    kind: Literal["lighting", "blur", "shift"]
    start: int = 0
    strength: float = 0.6

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift {self.kind!r}; known: {', '.join(DRIFT_KINDS)}")
        if self.start < 0:
            raise ValueError(f"drift start must be a frame number >= 0, got {self.start}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"drift strength must be in (0, 1], got {self.strength}")

    def apply(self, image: np.ndarray, n: int) -> np.ndarray:
        """Frame ``n`` as the drifted camera sees it (unchanged before ``start``)."""
        if n < self.start:
            return image
        if self.kind == "lighting":
            return np.clip(image.astype(np.float32) * (1.0 - 0.6 * self.strength), 0, 255).astype(np.uint8)
        if self.kind == "blur":
            return cv2.GaussianBlur(image, (0, 0), 8.0 * self.strength)
        height, width = image.shape[:2]
        m = cv2.getRotationMatrix2D((width / 2, height / 2), 6.0 * self.strength, 1.0)
        m[:, 2] += (0.12 * self.strength * width, 0.08 * self.strength * height)
        return cv2.warpAffine(image, m, (width, height), borderMode=cv2.BORDER_REPLICATE)

    def describe(self) -> str:
        return f"{self.kind}@{self.start}x{self.strength:g}"


# --- A camera on a line ------------------------------------------------------------------

# Empty belt between parts close together (pixels of a 640-wide frame at zoom 1): well under
# the 480 px field, so the next part enters the view while the previous one is still in it.
CLOSE_SPACING: tuple[float, float] = (40.0, 160.0)


@dataclass(frozen=True)
class Scene:
    spec: PartSpec | None  # the part wholly inside the inspected field; None: no part is
    part_id: int | None
    position: tuple[float, float] | None  # part centre in frame pixels
    look: CameraLook
    # Every part in view, wholly or partly, with its centre; None: just ``spec`` at ``position``
    # (one part at a time). Parts close together (``SynthCamera.spacing``) fill it.
    parts: tuple[tuple[PartSpec, tuple[float, float]], ...] | None = None


@dataclass
class SynthCamera:
    """One camera watching one line: parts pass with gaps (or close together), the light drifts, the belt moves."""

    line_id: str
    camera_id: str
    seed: int
    part_types: list[str]
    fps: float = 10.0
    size: tuple[int, int] = (640, 480)
    defect_rate: float = 0.25
    frames_per_part: tuple[int, int] = (8, 15)
    gap_frames: tuple[int, int] = (2, 6)
    # Parts close together: None (the default) shows one part at a time, teleported into the
    # inspected field after a gap of empty belt. (min, max): parts follow each other on the
    # belt with this much empty belt between them (pixels of a 640-wide frame at zoom 1) and
    # cross the whole view, so a frame shows the leaving part and the entering one; the camera
    # starts on a loaded belt, ``gap_frames`` does not apply, and the belt speed is one per camera
    # (a part stays about ``frames_per_part`` frames wholly inside the inspected field).
    spacing: tuple[float, float] | None = None
    drift: SynthDrift | None = None  # None: the camera sees the line as calibrated throughout
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        # the camera's constants and its parts come from one seeded stream: rebuild the camera to replay it
        for t in self.part_types:
            if t not in PART_TYPES:
                raise ValueError(f"unknown part type {t!r}; known: {sorted(PART_TYPES)}")
        if not 0.0 <= self.defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {self.defect_rate}")
        self.rng = np.random.default_rng([self.seed, stable_hash(self.line_id), stable_hash(self.camera_id)])
        r = self.rng
        # What makes this camera itself: mounting height, belt, light, sensor.
        self.scale = float(r.uniform(0.92, 1.04))
        grey = r.uniform(70, 110)
        self.belt_bgr = tuple(int(np.clip(grey + r.uniform(-8, 8), 0, 255)) for _ in range(3))
        self.base_brightness = float(r.uniform(0.9, 1.1))
        self.base_tint = np.array([1.0 + r.uniform(-0.06, 0.06) for _ in range(3)])
        self.noise_sigma = float(r.uniform(2.0, 6.0))
        self.drift_period_s = float(r.uniform(20, 60))
        self.vignette = float(r.uniform(0.05, 0.25))
        if self.spacing is not None:
            lo, hi = self.spacing
            if not 0 <= lo <= hi:
                raise ValueError(f"spacing must be (min, max) with 0 <= min <= max, got {self.spacing}")
            x_start, x_end = inspected_x_range(self.size, self.scale)
            k = self.scale * self.size[0] / BASE_WIDTH
            if (PART_WIDTH + lo) * k <= x_end - x_start:
                raise ValueError(f"spacing {lo:g} would put two parts wholly inside the inspected field at once")

    def _look(self, n: int, phase: float, belt_speed: float) -> CameraLook:
        t = n / self.fps
        return CameraLook(
            scale=self.scale,
            belt_bgr=self.belt_bgr,  # type: ignore[arg-type]
            belt_phase=phase,
            brightness=self.base_brightness * (1 + 0.12 * math.sin(2 * math.pi * t / self.drift_period_s))
            * float(self.rng.uniform(0.98, 1.02)),
            tint=tuple(self.base_tint * (1 + 0.03 * math.sin(2 * math.pi * t / (1.7 * self.drift_period_s)))),  # type: ignore[arg-type]
            vignette=self.vignette,
            noise_sigma=self.noise_sigma,
            # the exposure lasts about a quarter of the frame interval
            blur_px=min(9, int(round(belt_speed * 0.25))),
        )

    def scenes(self, count: int) -> Iterator[Scene]:
        """What is in front of the camera for ``count`` consecutive frames (nothing rendered yet)."""
        if self.spacing is not None:
            yield from self._close_scenes(count)
            return
        r = self.rng
        width, height = self.size
        phase = float(r.uniform(0, 100))
        n = 0
        part_id = 0
        while n < count:
            # a gap of empty belt, then one part crossing the inspected field
            gap = int(r.integers(self.gap_frames[0], self.gap_frames[1] + 1))
            passage = int(r.integers(self.frames_per_part[0], self.frames_per_part[1] + 1))
            spec = sample_part(r, str(r.choice(self.part_types)), self.defect_rate)
            x_start, x_end = inspected_x_range(self.size, self.scale)
            belt_speed = (x_end - x_start) / max(1, passage - 1)  # pixels per frame
            y = height / 2 + float(r.uniform(-0.04, 0.04)) * height
            part_id += 1
            plan = [(None, 0.0)] * gap + [(spec, x_start + belt_speed * i) for i in range(passage)]
            for current, x in plan:
                if n >= count:
                    return
                phase += belt_speed
                look = self._look(n, phase, belt_speed)
                n += 1
                if current is None:
                    yield Scene(None, None, None, look)
                else:
                    yield Scene(current, part_id, (x, y), look)

    def _close_scenes(self, count: int) -> Iterator[Scene]:
        """Parts close together: a loaded belt carries them across the whole view at one speed."""
        assert self.spacing is not None
        r = self.rng
        width, height = self.size
        phase = float(r.uniform(0, 100))
        x_start, x_end = inspected_x_range(self.size, self.scale)
        # one belt speed per camera: a part stays about frames_per_part frames in the inspected field
        passage = int(r.integers(self.frames_per_part[0], self.frames_per_part[1] + 1))
        belt_speed = (x_end - x_start) / max(1, passage - 1)
        k = self.scale * width / BASE_WIDTH
        length = PART_WIDTH * k  # along the belt
        reach = math.hypot(PART_WIDTH, max(p.height for p in PART_TYPES.values())) / 2 * k + 16 * k  # + shadow
        belt: list[tuple[PartSpec, int, float, float]] = []  # (spec, part id, x at frame 0, y), downstream first
        part_id = 0

        def load(x: float) -> None:
            nonlocal part_id
            part_id += 1
            spec = sample_part(r, str(r.choice(self.part_types)), self.defect_rate)
            y = height / 2 + float(r.uniform(-0.04, 0.04)) * height
            belt.append((spec, part_id, x, y))

        # the belt is already loaded when the camera starts: the first part anywhere in view
        load(float(r.uniform(0, width)))
        for n in range(count):
            shift = belt_speed * n
            # load parts upstream until the last one loaded is still wholly out of view
            while belt[-1][2] + shift + reach > 0:
                load(belt[-1][2] - length - float(r.uniform(*self.spacing)) * k)
            while belt[0][2] + shift - reach >= width:
                belt.pop(0)  # it left the view
            phase += belt_speed
            look = self._look(n, phase, belt_speed)
            shown = tuple((spec, (x + shift, y)) for spec, _, x, y in belt if x + shift + reach > 0)
            inside = [(spec, pid, (x + shift, y)) for spec, pid, x, y in belt if x_start <= x + shift <= x_end]
            if inside:
                (spec, pid, position), = inside  # at most one: __post_init__ checked the spacing
                yield Scene(spec, pid, position, look, shown)
            else:
                yield Scene(None, None, None, look, shown)

    def frames(self, count: int) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        """``count`` consecutive BGR frames with their ground truth."""
        # noise has its own stream, so scenes() alone replays the same parts and positions
        noise = np.random.default_rng([self.seed, stable_hash(self.camera_id), 1])
        for n, scene in enumerate(self.scenes(count)):
            if scene.parts is None:
                image = render_part_frame(scene.spec, noise, scene.position, scene.look, self.size)
            else:
                image = render_parts_frame(scene.parts, noise, scene.look, self.size)
            if self.drift is not None:
                image = self.drift.apply(image, n)
            yield image, truth_for(scene.spec, scene.part_id)


def inspected_x_range(size: tuple[int, int], scale: float) -> tuple[float, float]:
    """Where a part's centre may be so that the whole part lies inside the central square.

    CLIP preprocessors resize the shortest edge and keep the central square, so that
    square is the inspected field: a part is only labelled while it is wholly inside it.
    """
    width, height = size
    side = min(width, height)
    k = scale * width / BASE_WIDTH
    half = PART_WIDTH / 2 * k * 1.06  # 6%: room for the mounting angle
    lo, hi = (width - side) / 2 + half + 2, (width + side) / 2 - half - 2 - 7 * k  # 7: the shadow falls right
    if hi < lo:
        raise ValueError(f"a part at scale {scale} does not fit the central square of a {width}x{height} frame")
    return lo, hi


def truth_for(spec: PartSpec | None, part_id: int | None = None) -> FrameTruth:
    if spec is None:
        return FrameTruth(part_id=None, part_type=None, defects=[], answers={q.id: False for q in SYNTH_QUESTIONS})
    return FrameTruth(part_id=part_id, part_type=spec.part_type, defects=spec.defects, answers=spec.answers())


def stable_hash(text: str) -> int:
    # Python's hash() is salted per process; seeds must not be.
    h = 2166136261
    for ch in text.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def part_types_for(line_id: str, index: int) -> list[str]:
    if line_id in LINE_PART_TYPES:
        return LINE_PART_TYPES[line_id]
    pairs = list(LINE_PART_TYPES.values())
    return pairs[index % len(pairs)]


def line_ids(count: int, prefix: str = "line") -> list[str]:
    return [f"{prefix}-{chr(ord('a') + i)}" if i < 26 else f"{prefix}-{i}" for i in range(count)]


def write_recordings(
    out: str | Path,
    *,
    lines: int = 3,
    cameras: int = 2,
    frames: int = 300,
    seed: int = 0,
    fps: float = 10.0,
    defect_rate: float = 0.25,
    size: tuple[int, int] = (640, 480),
    jpeg_quality: int = 90,
    on_frame: "callable[[], None] | None" = None,  # type: ignore[valid-type]
    spacing: tuple[float, float] | None = None,
    drift: SynthDrift | None = None,
) -> list[Path]:
    """Write one labelled recording per camera under ``out/<line>/<camera>``; returns their paths.

    ``spacing``: parts close together (``SynthCamera.spacing``); None: one part at a time.
    ``drift``: every camera drifts the same way from the same frame (``SynthDrift``); None: none does.
    """
    out = Path(out)
    paths: list[Path] = []
    start_ns = 1_700_000_000_000_000_000 + seed * 10**12  # fixed: recordings are reproducible byte for byte
    for li, line_id in enumerate(line_ids(lines)):
        for ci in range(cameras):
            camera_id = f"{line_id}-cam{ci + 1}"
            cam = SynthCamera(line_id, camera_id, seed, part_types_for(line_id, li), fps, size, defect_rate,
                              spacing=spacing, drift=drift)
            source = f"synth seed={seed} defect_rate={defect_rate}"
            if spacing is not None:
                source += f" spacing={spacing[0]:g}-{spacing[1]:g}"
            if drift is not None:
                source += f" drift={drift.describe()}"
            meta = RecordingMeta(
                line_id=line_id, camera_id=camera_id, fps=fps, width=size[0], height=size[1],
                source=source, created_ns=start_ns,
                part_types=cam.part_types, questions=[q.model_dump(mode="json") for q in SYNTH_QUESTIONS],
            )
            paths.append(write_recording(out / line_id / camera_id, meta, cam.frames(frames), jpeg_quality, on_frame))
    return paths


def write_recording(
    path: Path,
    meta: RecordingMeta,
    frames: Iterable[tuple[np.ndarray, FrameTruth]],
    jpeg_quality: int = 90,
    on_frame: "callable[[], None] | None" = None,  # type: ignore[valid-type]
) -> Path:
    """Write ``frames`` as JPEG to a labelled recording at ``path``, captured every ``1 / meta.fps`` s from ``meta.created_ns``."""
    with RecordingWriter(path, meta) as writer:
        for seq, (image, truth) in enumerate(frames):
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            writer.append(seq, meta.created_ns + int(seq * 1e9 / meta.fps), jpeg.tobytes(), truth)
            if on_frame is not None:
                on_frame()
    return path


def benchmark(frames: int = 300, size: tuple[int, int] = (640, 480)) -> dict[str, float]:
    """Render and JPEG-encode ``frames`` frames of one camera; frames per second, single thread."""
    cam = SynthCamera("line-a", "bench", 0, ["bracket", "housing"], size=size)
    t0 = time.perf_counter()
    for image, _ in cam.frames(frames):
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    dt = time.perf_counter() - t0
    return {"frames": frames, "seconds": dt, "fps": frames / dt}
