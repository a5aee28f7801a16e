"""A second product family for the synthetic line: cut sheets of woven fabric, to measure transfer.

The encoder of the shipped bundle was pretrained on the part family of ``ingest.synth`` alone
(rigid parts on a belt, drawn features, defects such as scratches and missing screws). This
family shares nothing with it: a woven surface fills the whole view, there is no part outline,
label or screw, and the frames have another size (512x384 by default). It exists to measure how
well the shipped scorers transfer to a product they never saw (docs/evaluation.md, "Transfer to
a product the encoder never saw"), so it must stay out of every pretraining and head-training
set of the shipped bundle (tests/training/test_transfer_guard.py).

Each frame shows one cut sheet lying flat under the camera: a sheet is a part (its own
``part_id``), seen on 1-3 consecutive frames while the conveyor moves it a little to the
left. Defects, each drawn only inside the inspected field (the central square that a CLIP
preprocessor keeps, at every frame of the sheet):

* small local ones, a few pixels: ``hole`` (5-8 px across), ``pulled_thread`` (a thread lifted
  out of the weave, 2-3 px wide and 25-45 long, with the dark gap it left) and ``knot`` (a slub
  on a thread, 9-12 by 6-8 px);
* larger texture changes: ``stain`` (an irregular translucent blot, about 30-95 px) and
  ``weave_fault`` (a band 24-40 px high across the field woven in the other pattern, looser).

Determinism, as for parts: ``SheetSpec`` holds everything that decides how a sheet looks,
including a ``seed`` whose draws happen in a fixed order whatever defects are present, so two
specs that differ in one defect render to two sheets that differ only where that defect is
(``defect_boxes`` says where). Lighting, vignetting and sensor noise come from the camera.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import cv2
import numpy as np

from ingest.recording import FrameTruth, RecordingMeta
from ingest.synth import line_ids, noise_bank, stable_hash, vignette_map, write_recording
from schemas.config import Question, QuestionCategory

PRODUCT = "fabric"
FABRIC_SIZE = (512, 384)
BASE_WIDTH = 512  # sizes below are in pixels of a 512-wide frame; other sizes scale them
SMALL_DEFECTS = ("hole", "pulled_thread", "knot")
LARGE_DEFECTS = ("stain", "weave_fault")
FABRIC_DEFECTS = SMALL_DEFECTS + LARGE_DEFECTS
FABRIC_QUESTIONS: list[Question] = [
    Question(id="defect", text="Is there a defect in the fabric?", defect_type="defect",
             category=QuestionCategory.fine_detail, clip_positive="a photo of damaged woven fabric",
             clip_negative="a photo of flawless woven fabric"),
]
TRAVEL = 0.08  # how far a sheet moves (of the frame width) between its first and last frame


@dataclass(frozen=True)
class FabricKind:
    name: str
    weave: Literal["plain", "twill"]
    warp_bgr: tuple[int, int, int]  # threads along the sheet (vertical)
    weft_bgr: tuple[int, int, int]  # threads across it
    pitch: float  # thread spacing, pixels of a 512-wide frame


FABRIC_KINDS: dict[str, FabricKind] = {
    k.name: k
    for k in (
        FabricKind("denim", "twill", (128, 72, 38), (196, 200, 204), 6.5),
        FabricKind("linen", "plain", (132, 168, 186), (120, 158, 178), 7.5),
        FabricKind("canvas", "plain", (104, 112, 110), (124, 130, 128), 6.0),
    )
}
# Which fabric each line weaves; lines beyond these cycle through them.
LINE_KINDS = ("denim", "linen", "canvas")


@dataclass(frozen=True)
class SheetSpec:
    """Everything that decides how one sheet looks. ``replace`` one property to make a pair."""

    kind: str
    seed: int = 0  # weave irregularities and defect geometry
    defects: tuple[str, ...] = ()
    angle: float = 0.0  # how far the weave is turned on the sheet, degrees

    def __post_init__(self) -> None:
        if self.kind not in FABRIC_KINDS:
            raise ValueError(f"unknown fabric {self.kind!r}; known: {sorted(FABRIC_KINDS)}")
        unknown = sorted(set(self.defects) - set(FABRIC_DEFECTS))
        if unknown:
            raise ValueError(f"unknown fabric defect {', '.join(unknown)}; known: {', '.join(FABRIC_DEFECTS)}")

    def replace(self, **changes: object) -> "SheetSpec":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def parse_defect_types(text: str | None) -> tuple[str, ...]:
    """``small``, ``large``, ``all`` (None) or a comma-separated list of fabric defect types."""
    if text is None or text == "all":
        return FABRIC_DEFECTS
    named = {"small": SMALL_DEFECTS, "large": LARGE_DEFECTS}
    chosen = named.get(text) or tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in chosen if t not in FABRIC_DEFECTS]
    if unknown or not chosen:
        raise ValueError(f"unknown fabric defect {', '.join(unknown) or repr(text)}; choose small, large, all "
                         f"or some of {', '.join(FABRIC_DEFECTS)}")
    return chosen


def sample_sheet(rng: np.random.Generator, kind: str, defect_rate: float, defect_types: Sequence[str]) -> SheetSpec:
    """A random sheet: with probability ``defect_rate`` it has one defect of ``defect_types`` (sometimes two)."""
    spec = SheetSpec(kind, seed=int(rng.integers(2**31)), angle=float(rng.uniform(-3.0, 3.0)))
    if rng.random() < defect_rate:
        n = 2 if rng.random() < 0.15 and len(defect_types) > 1 else 1
        spec = spec.replace(defects=tuple(sorted(str(d) for d in rng.choice(list(defect_types), n, replace=False))))
    return spec


# --- Drawing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draws:
    """A sheet's random draws, in a fixed order whatever is present."""

    warp_tone: np.ndarray
    weft_tone: np.ndarray
    wave: np.ndarray  # (2, 6, 8) coarse displacement field
    defects: dict[str, np.ndarray]
    seed: int

    @staticmethod
    def of(seed: int) -> "_Draws":
        g = np.random.default_rng(seed)
        tones = 1.0 + 0.07 * g.standard_normal((2, 512))
        wave = g.uniform(-1.0, 1.0, size=(2, 6, 8))
        defects = {d: g.uniform(0, 1, size=12) for d in FABRIC_DEFECTS}
        return _Draws(tones[0], tones[1], wave, defects, seed)

    def fibre(self, shape: tuple[int, int]) -> np.ndarray:
        """Fine multiplicative noise, one value a pixel: a stream of its own, as its size follows the frame's."""
        return np.random.default_rng([self.seed, 1]).standard_normal(shape, dtype=np.float32)


def sheet_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the sheet drawn for frames of ``size``: wider by the conveyor's travel."""
    width, height = size
    return width + int(round(TRAVEL * width)), height


def _weave(kind: FabricKind, pattern: str, pitch: float, shape: tuple[int, int], draws: _Draws, angle: float,
           k: float) -> np.ndarray:
    """The woven surface, float32 BGR: each thread a rounded strand that dives under its neighbours."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = [cv2.resize(draws.wave[i].astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) * 1.2 * k
            for i in range(2)]
    a = math.radians(angle)
    u = (x * math.cos(a) + y * math.sin(a) + wave[0]) / (pitch * k)
    v = (-x * math.sin(a) + y * math.cos(a) + wave[1]) / (pitch * k)
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i, v - j
    warp_up = ((i + j) % 2 == 0) if pattern == "plain" else ((i - j) % 3 != 0)
    # across a strand: rounded, dark in the gap between strands; along it: dimmer where it dives under
    warp_shade = np.sin(np.pi * fu) ** 0.6 * (0.8 + 0.2 * np.sin(np.pi * fv))
    weft_shade = np.sin(np.pi * fv) ** 0.6 * (0.8 + 0.2 * np.sin(np.pi * fu))
    shade = np.where(warp_up, warp_shade, weft_shade)
    warp = np.array(kind.warp_bgr, np.float32) * draws.warp_tone[i % len(draws.warp_tone)][..., None]
    weft = np.array(kind.weft_bgr, np.float32) * draws.weft_tone[j % len(draws.weft_tone)][..., None]
    colour = np.where(warp_up[..., None], warp, weft)
    return (colour * ((0.35 + 0.65 * shade) * (1.0 + 0.06 * draws.fibre((h, w))))[..., None]).astype(np.float32)


def inspected_box(size: tuple[int, int], margin: float = 0.0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the sheet where a defect stays inside the frame's central square at every frame.

    ``margin``: how far the defect reaches from its centre, kept inside too.
    """
    width, height = size
    side = min(width, height)
    travel = int(round(TRAVEL * width))
    x0, x1 = (width - side) / 2 + travel + margin, (width + side) / 2 - margin
    y0, y1 = (height - side) / 2 + margin, (height + side) / 2 - margin
    return x0, y0, x1, y1


def _centre(draw: np.ndarray, size: tuple[int, int], reach: float) -> tuple[float, float]:
    x0, y0, x1, y1 = inspected_box(size, reach)
    return x0 + (x1 - x0) * draw[0], y0 + (y1 - y0) * draw[1]


def defect_boxes(spec: SheetSpec, size: tuple[int, int] = FABRIC_SIZE) -> dict[str, tuple[int, int, int, int]]:
    """Where each of the spec's defects changes the sheet: (x0, y0, x1, y1) in sheet pixels, end exclusive."""
    k = size[0] / BASE_WIDTH
    draws = _Draws.of(spec.seed)
    return {d: _box(d, draws.defects[d], size, k) for d in spec.defects}


def _reach(defect: str, k: float) -> float:
    # the farthest a defect's pixels lie from its centre (base pixels times k), antialiasing included
    return {"hole": 12, "pulled_thread": 30, "knot": 11, "stain": 50, "weave_fault": 0}[defect] * k


def _box(defect: str, d: np.ndarray, size: tuple[int, int], k: float) -> tuple[int, int, int, int]:
    if defect == "weave_fault":
        x0, y0, x1, y1 = inspected_box(size)
        half = (12 + 8 * d[1]) * k + 4 * k  # the band and its soft edge
        cy = y0 + half + (y1 - y0 - 2 * half) * d[0]
        return int(x0), int(math.floor(cy - half)), int(math.ceil(x1)), int(math.ceil(cy + half)) + 1
    r = _reach(defect, k)
    cx, cy = _centre(d, size, r)
    return int(math.floor(cx - r)), int(math.floor(cy - r)), int(math.ceil(cx + r)) + 1, int(math.ceil(cy + r)) + 1


def render_sheet(spec: SheetSpec, size: tuple[int, int] = FABRIC_SIZE) -> np.ndarray:
    """The sheet alone, evenly lit: float32 BGR of ``sheet_size(size)``, the frames' crops of it."""
    kind = FABRIC_KINDS[spec.kind]
    k = size[0] / BASE_WIDTH
    w, h = sheet_size(size)
    draws = _Draws.of(spec.seed)
    img = _weave(kind, kind.weave, kind.pitch, (h, w), draws, spec.angle, k)
    for defect in FABRIC_DEFECTS:  # a fixed order: two defects overlap the same way whichever was added
        if defect in spec.defects:
            _draw_defect(img, defect, kind, draws, spec, size, k)
    return img


def _draw_defect(img: np.ndarray, defect: str, kind: FabricKind, draws: _Draws, spec: SheetSpec,
                 size: tuple[int, int], k: float) -> None:
    d = draws.defects[defect]
    if defect == "weave_fault":
        _weave_fault(img, kind, draws, spec, size, k, d)
        return
    cx, cy = _centre(d, size, _reach(defect, k))
    warp = np.array(kind.warp_bgr, np.float64)
    if defect == "hole":
        # the conveyor shows through, ringed by strands pushed aside, with a few broken ends
        axes = ((2.5 + 1.5 * d[2]) * k, (2.5 + 1.5 * d[3]) * k)
        sub = 16  # draw at 1/16 px so that a 5 px hole keeps its shape
        c = (int(cx * sub), int(cy * sub))
        cv2.ellipse(img, c, (int((axes[0] + 2 * k) * sub), int((axes[1] + 2 * k) * sub)), 180 * d[4], 0, 360,
                    tuple(float(v) * 0.55 for v in warp), -1, cv2.LINE_AA, 4)
        for t in range(3):
            ang = 2 * math.pi * (d[5 + t])
            r0, r1 = axes[0] + 1 * k, axes[0] + (4 + 2 * d[8 + t]) * k
            p0 = (int((cx + r0 * math.cos(ang)) * sub), int((cy + r0 * math.sin(ang)) * sub))
            p1 = (int((cx + r1 * math.cos(ang)) * sub), int((cy + r1 * math.sin(ang)) * sub))
            cv2.line(img, p0, p1, tuple(float(v) * 1.25 for v in kind.weft_bgr), max(1, int(k)), cv2.LINE_AA, 4)
        cv2.ellipse(img, c, (int(axes[0] * sub), int(axes[1] * sub)), 180 * d[4], 0, 360, (22, 24, 26), -1,
                    cv2.LINE_AA, 4)
    elif defect == "pulled_thread":
        # a strand lifted out along the warp or the weft: bright where it stands up, dark where it left
        along_warp = d[2] < 0.5
        ang = math.radians(spec.angle) + (math.pi / 2 if along_warp else 0.0)
        length = (25 + 20 * d[3]) * k
        du, dv = math.cos(ang) * length / 2, math.sin(ang) * length / 2
        nu, nv = -math.sin(ang) * 2.5 * k, math.cos(ang) * 2.5 * k
        strand = tuple(min(255.0, float(v) * 1.45) for v in (kind.warp_bgr if along_warp else kind.weft_bgr))
        gap = tuple(float(v) * 0.3 for v in warp)
        cv2.line(img, _p(cx - du + nu, cy - dv + nv), _p(cx + du + nu, cy + dv + nv), gap, max(1, int(2 * k)), cv2.LINE_AA, 4)
        cv2.line(img, _p(cx - du, cy - dv), _p(cx + du, cy + dv), strand, max(2, int(round(2.5 * k))), cv2.LINE_AA, 4)
        end = (cx + du, cy + dv) if d[4] < 0.5 else (cx - du, cy - dv)
        cv2.circle(img, _p(*end), int(3.5 * k * 16), strand, max(1, int(2 * k)), cv2.LINE_AA, 4)
    elif defect == "knot":
        # a slub: a thick, darker lump on a strand, lit from the top left
        ang = spec.angle + (90 if d[2] < 0.5 else 0)
        axes = (int((4.5 + 1.5 * d[3]) * k * 16), int((3.0 + 1.0 * d[4]) * k * 16))
        c = (int(cx * 16), int(cy * 16))
        lump = tuple(float(v) * 0.6 for v in (kind.warp_bgr if d[5] < 0.5 else kind.weft_bgr))
        cv2.ellipse(img, (c[0] + int(1.5 * k * 16), c[1] + int(1.5 * k * 16)), axes, ang, 0, 360,
                    tuple(float(v) * 0.35 for v in warp), -1, cv2.LINE_AA, 4)
        cv2.ellipse(img, c, axes, ang, 0, 360, lump, -1, cv2.LINE_AA, 4)
        cv2.ellipse(img, (c[0] - int(1.5 * k * 16), c[1] - int(1.2 * k * 16)), (axes[0] // 3, axes[1] // 3), ang, 0,
                    360, tuple(min(255.0, float(v) * 1.6) for v in lump), -1, cv2.LINE_AA, 4)
    elif defect == "stain":
        _stain(img, d, cx, cy, k)


def _p(x: float, y: float) -> tuple[int, int]:
    # OpenCV's fixed point: coordinates in 1/16 px (shift 4), so a few-pixel defect keeps its shape
    return int(round(x * 16)), int(round(y * 16))


def _stain(img: np.ndarray, d: np.ndarray, cx: float, cy: float, k: float) -> None:
    """A translucent blot with a ragged edge: oil (darker) or rust (brown), the weave showing through."""
    r = int(math.ceil(_reach("stain", k)))
    radius = (20 + 12 * d[2]) * k  # at most 32 * 1.2 (aspect) * 1.25 (ragged edge) = 48: inside the reach
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    ragged = cv2.resize(np.random.default_rng(int(d[3] * 2**31)).uniform(-1, 1, (5, 5)).astype(np.float32),
                        (2 * r + 1, 2 * r + 1), interpolation=cv2.INTER_CUBIC)
    aspect = 0.7 + 0.5 * d[4]
    dist = np.sqrt((xx / aspect) ** 2 + (yy * aspect) ** 2) / radius + 0.25 * ragged
    alpha = np.clip((1.0 - dist) * 4.0, 0.0, 1.0) * (0.55 + 0.25 * d[5])
    tint = np.array((0.45, 0.5, 0.55) if d[6] < 0.5 else (0.45, 0.6, 0.85), np.float32)
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    region = img[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    region *= 1.0 - alpha[..., None] * (1.0 - tint)


def _weave_fault(img: np.ndarray, kind: FabricKind, draws: _Draws, spec: SheetSpec, size: tuple[int, int], k: float,
                 d: np.ndarray) -> None:
    """A band across the field woven in the other pattern, looser: the loom's pattern went wrong for a while."""
    x0, y0, x1, y1 = _box("weave_fault", d, size, k)
    band = img[y0:y1, x0:x1]
    other = "plain" if kind.weave == "twill" else "twill"
    faulty = _weave(kind, other, kind.pitch * 1.45, band.shape[:2], draws, spec.angle + 4 * (d[2] - 0.5), k) * 0.88
    h = y1 - y0
    ramp = np.clip(np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / (4 * k), 0.0, 1.0).astype(np.float32)
    band[:] = band * (1.0 - ramp[:, None, None]) + faulty * ramp[:, None, None]


# --- A camera over the conveyor ---------------------------------------------------------------


@dataclass
class FabricCamera:
    """One camera over a conveyor of cut sheets: each fills the view for 1-3 frames as it moves past."""

    line_id: str
    camera_id: str
    seed: int
    kinds: list[str]
    size: tuple[int, int] = FABRIC_SIZE
    defect_rate: float = 0.3
    defect_types: tuple[str, ...] = FABRIC_DEFECTS
    frames_per_sheet: tuple[int, int] = (1, 3)
    fps: float = 10.0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in FABRIC_KINDS:
                raise ValueError(f"unknown fabric {kind!r}; known: {sorted(FABRIC_KINDS)}")
        if not 0.0 <= self.defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {self.defect_rate}")
        parse_defect_types(",".join(self.defect_types))
        x0, y0, x1, y1 = inspected_box(self.size, max(_reach(d, self.size[0] / BASE_WIDTH) for d in FABRIC_DEFECTS))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"a {self.size[0]}x{self.size[1]} frame's central square has no room for a defect")
        self.rng = np.random.default_rng([self.seed, stable_hash(self.line_id), stable_hash(self.camera_id), 2])
        r = self.rng
        self.base_brightness = float(r.uniform(0.9, 1.1))
        self.base_tint = np.array([1.0 + r.uniform(-0.05, 0.05) for _ in range(3)], np.float32)
        self.noise_sigma = float(r.uniform(2.0, 5.0))
        self.vignette = float(r.uniform(0.05, 0.2))
        self.drift_period_s = float(r.uniform(20, 60))

    def sheets(self, count: int) -> Iterator[tuple[SheetSpec, int, int, int]]:
        """(spec, sheet id, frame of the sheet, its frames) for ``count`` consecutive frames."""
        n, sheet_id = 0, 0
        while n < count:
            sheet_id += 1
            spec = sample_sheet(self.rng, str(self.rng.choice(self.kinds)), self.defect_rate, self.defect_types)
            shown = int(self.rng.integers(self.frames_per_sheet[0], self.frames_per_sheet[1] + 1))
            for i in range(min(shown, count - n)):
                yield spec, sheet_id, i, shown
            n += shown

    def frames(self, count: int) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        """``count`` consecutive BGR frames with their ground truth."""
        width, height = self.size
        travel = sheet_size(self.size)[0] - width
        noise = np.random.default_rng([self.seed, stable_hash(self.camera_id), 3])
        sheet, drawn = None, None
        for n, (spec, sheet_id, i, shown) in enumerate(self.sheets(count)):
            if spec is not sheet:
                sheet, drawn = spec, render_sheet(spec, self.size)
            # the conveyor carries the sheet to the left: later frames see more of its right end
            offset = int(round(travel * i / max(1, shown - 1))) if shown > 1 else travel // 2
            t = n / self.fps
            gain = self.base_tint * self.base_brightness * (1 + 0.1 * math.sin(2 * math.pi * t / self.drift_period_s)) \
                * float(noise.uniform(0.98, 1.02))
            out = drawn[:, offset:offset + width] * gain * (1.0 - self.vignette * vignette_map(height, width))
            oy, ox = noise.integers(0, 64, size=2)
            out += self.noise_sigma * noise_bank(height, width)[oy : oy + height, ox : ox + width]
            yield np.clip(out, 0, 255).astype(np.uint8), truth_for(spec, sheet_id)


def truth_for(spec: SheetSpec, sheet_id: int) -> FrameTruth:
    """A frame's truth: the sheet is the part; "defect" is yes with any defect."""
    return FrameTruth(part_id=sheet_id, part_type=spec.kind, defects=list(spec.defects),
                      answers={q.id: bool(spec.defects) for q in FABRIC_QUESTIONS})


def write_fabric_recordings(
    out: str | Path,
    *,
    lines: int = 1,
    cameras: int = 1,
    frames: int = 300,
    seed: int = 0,
    fps: float = 10.0,
    defect_rate: float = 0.3,
    size: tuple[int, int] = FABRIC_SIZE,
    jpeg_quality: int = 90,
    on_frame: "callable[[], None] | None" = None,  # type: ignore[valid-type]
    defect_types: Sequence[str] = FABRIC_DEFECTS,
) -> list[Path]:
    """Write one labelled recording per camera under ``out/<line>/<camera>`` (lines fabric-a, ...); their paths.

    The recordings' metadata says ``product: fabric`` and their ``source`` starts ``synth fabric``:
    what keeps them out of the shipped bundle's training (tests/training/test_transfer_guard.py).
    """
    out = Path(out)
    types = parse_defect_types(",".join(defect_types))
    paths: list[Path] = []
    start_ns = 1_700_000_000_000_000_000 + seed * 10**12
    for li, line_id in enumerate(line_ids(lines, prefix="fabric")):
        kind = LINE_KINDS[li % len(LINE_KINDS)]
        for ci in range(cameras):
            camera_id = f"{line_id}-cam{ci + 1}"
            cam = FabricCamera(line_id, camera_id, seed, [kind], size, defect_rate, types, fps=fps)
            source = f"synth {PRODUCT} seed={seed} defect_rate={defect_rate}"
            if types != FABRIC_DEFECTS:
                source += f" defects={','.join(types)}"
            meta = RecordingMeta(
                line_id=line_id, camera_id=camera_id, fps=fps, width=size[0], height=size[1], source=source,
                created_ns=start_ns, product=PRODUCT, part_types=[kind],
                questions=[q.model_dump(mode="json") for q in FABRIC_QUESTIONS],
            )
            paths.append(write_recording(out / line_id / camera_id, meta, cam.frames(frames), jpeg_quality, on_frame))
    return paths
