"""Parts in a camera's stream, without ground truth: which part lies wholly inside the inspection zone.

One ``PartTracker`` per camera, fed every decoded frame of that camera in order (the worker's
in-order model thread)::

    tracker = PartTracker.from_camera(camera, frame_size=(frame.width, frame.height))
    seen = tracker.update(image, frame.seq, header_part_id=frame.part_id)
    observation = seen.observation()  # PartObservation | None, for the frame's result

``update`` says whether a part lies wholly inside the camera's inspection zone, its box in
frame pixels, and a part id that stays the same for the part's whole passage:
``f"{camera_id}.{seq}"`` with the ``seq`` of the part's first frame wholly inside the zone,
so a replay of the same frames gives the same ids. A frame that carries a ``ps-part-id``
header (the camera or a PLC knows the part) is named by the header instead.

How parts are found: foreground against a learned empty-belt background, on a small copy of
the frame (160 cells along the belt, 60 across: 4x8 pixels at 640x480; one ``cv2.resize``).

* Background: a per-cell running mean of the belt, learned only from cells that no part
  covers, so it keeps learning while parts pass and on a zone that is never empty. Its
  rate starts at 1/n (the first frames count fully) and settles at ``learning_rate``.
* Lighting drift: every frame is divided by a per-channel gain, the median ratio of frame
  to background on the cells that were belt in the previous frame.
* Moving belt texture: stripes, slats and seams run across the belt and move with it, so a
  per-cell mean cannot hold them. Their share of each column is measured on the belt rows
  (not where parts were on the last frame, nor mostly differing now): the median of the
  cells there that the texture runs over, and taken out of the whole column. Which cells
  it runs over is learned: where the texture changed since the last frame, a belt cell's
  difference changed with it, a still thing's (rail, guide, fixture) did not. A cell must
  differ both with the texture taken out and without, so still things stay quiet too. The
  background learns each belt cell with the texture shifted back, so it stays one
  consistent picture of the belt. Fine texture (weave, grain) averages out in a cell.
* A cell differs when, averaged with its neighbours across the belt, it is further from the
  belt than ``min_contrast`` (relative, in any colour channel) and than ``noise_k`` times the
  measured sensor noise (in grey levels, so dark cells need more). Differing cells group
  into parts: connected regions, joined when they overlap along the belt (or nearly,
  ``join_gap``) and nearly touch across it, so a low-contrast part (a black housing on a
  dark belt) is found by its features, outline and shadow. Nothing is averaged along the
  belt, so the next part stays apart when about 30 px (at 640 wide) of belt shows between them.
* Tracking: a part is followed from frame to frame by its edges that no frame border cuts,
  predicted with the belt speed measured on the parts themselves, so the part entering
  while the previous one leaves is a track of its own, and a part that vanishes and
  reappears elsewhere is a new one. A part gets its id on its first frame wholly inside
  the zone: its box within the zone (give or take ``zone_margin``) and not cut by the frame.
* Start: the first frame seeds the background. Rows uniform along the belt (with uniform
  neighbours) are belt; the rows between them, where parts may lie, are interpolated from
  the belt rows above and below, so parts already in view on the first frame are found.
  A seed that was wrong somewhere heals: a cell that a part holds for ``absorb_after``
  frames (a wrong seed, a thing left lying) is learned quickly into the background, as
  a still thing.

Boxes are good to about a cell (4 px along the belt, 8 px across, at 640x480). A frame
costs well under a millisecond (``benchmark``); the state is a few arrays of the cell grid
and at most ``max_tracks`` tracks. Pure numpy and OpenCV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from schemas.frame import ID_PATTERN
from schemas.part import PartAggregate, PartObservation, PartSource

if TYPE_CHECKING:
    from schemas.config import CameraConfig, InspectionZone

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)
GRID_CELLS = (160, 60)  # the default working grid: cells along the belt, across it
_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class TrackedFrame:
    """What the tracker saw on one frame.

    ``part_id``: the part wholly inside the zone, None when no part is. ``source``: who named it,
    "header" (the frame's ``ps-part-id``) or "tracker". ``box``: that part's bounding box in
    frame pixels, when the tracker found it (a header-named frame may have none).
    """

    seq: int
    part_id: str | None
    source: PartSource | None
    box: Box | None
    parts_in_view: int  # parts followed on this frame, wholly or partly in view
    ready: bool  # False on the frame that seeded the background

    @property
    def in_zone(self) -> bool:
        return self.part_id is not None

    def observation(self, aggregate: PartAggregate = "mean") -> PartObservation | None:
        """What the frame's result carries: the part it shows, or None when no part is in the zone."""
        if self.part_id is None or self.source is None:
            return None
        return PartObservation(part_id=self.part_id, source=self.source, box=self.box, aggregate=aggregate)


@dataclass
class _Blob:
    """A part as found on one frame, in cells: ``lo``..``hi`` along the belt, ``top``..``bottom`` across."""

    lo: int
    hi: int
    top: int
    bottom: int
    clip_lo: bool  # cut by the frame's edge
    clip_hi: bool
    edge: bool = False  # touches the frame's edge across the belt
    box: Box = (0, 0, 0, 0)
    in_zone: bool = False


@dataclass
class _Track:
    blob: _Blob
    seq: int  # last frame it was found on
    velocity: float | None = None  # cells per frame along the belt
    missed: int = 0
    part_id: str | None = None
    zone_seq: int = 0  # seq of its first frame wholly inside the zone


class PartTracker:
    """Follows the parts passing one camera and says which one lies wholly inside its inspection zone.

    One per camera, fed every frame of that camera in order (``update``). Keyword arguments
    (the defaults suit a 640x480 camera at about 10 frames/s, parts a third of the frame wide):

    * ``zone``: (x0, y0, x1, y1) in frame pixels, or an ``InspectionZone``; None: the frame's
      central square, which is what a CLIP encoder reads of a whole frame.
    * ``frame_size``: (width, height); None: the first frame's.
    * ``belt_axis``: "x" when the belt runs along the frame's width (either way), "y" along its height.
    * ``cells``: the working grid, (along the belt, across it). More cells: finer boxes, more cost.
    * ``min_contrast``: the smallest relative difference from the belt that counts (0.05: 5%).
    * ``noise_k``: a difference must also exceed this many times the measured noise.
    * ``learning_rate``: per frame, how fast the belt model follows slow changes.
    * ``absorb_after``: frames a cell may stay foreground before it is learned as belt (heals a
      wrong start or a thing left lying; a part that stands still longer is lost).
    * ``min_area``: the smallest part, as a share of the zone's area.
    * ``join_gap``: pixels along the belt across which pieces of one part are joined (a dark
      part on a striped belt loses the columns where a stripe looks like it); parts closer
      together than this plus about a cell are seen as one.
    * ``zone_margin``: pixels a part's box may stick out of the zone and still be inside it
      (0: none; None: one cell each way, what the grid cannot resolve).
    * ``max_missed``: frames a part may go unseen before its track ends.
    * ``max_tracks``: at most this many parts followed at once.
    """

    def __init__(
        self,
        camera_id: str,
        zone: "InspectionZone | Sequence[int] | None" = None,
        frame_size: tuple[int, int] | None = None,
        *,
        belt_axis: str = "x",
        cells: tuple[int, int] = GRID_CELLS,
        min_contrast: float = 0.05,
        noise_k: float = 3.5,
        learning_rate: float = 0.05,
        absorb_after: int = 150,
        min_area: float = 0.01,
        join_gap: float = 8.0,
        zone_margin: float | None = 0.0,
        max_missed: int = 1,
        max_tracks: int = 16,
    ) -> None:
        if not _ID_RE.match(camera_id):
            raise ValueError(f"camera id {camera_id!r} is not an id ({ID_PATTERN})")
        if belt_axis not in ("x", "y"):
            raise ValueError(f"belt_axis must be 'x' or 'y', got {belt_axis!r}")
        if zone is not None and not isinstance(zone, (tuple, list)):
            zone = (zone.x0, zone.y0, zone.x1, zone.y1)  # an InspectionZone
        if zone is not None and (len(zone) != 4 or not (0 <= zone[0] < zone[2] and 0 <= zone[1] < zone[3])):
            raise ValueError(f"zone must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {tuple(zone)}")
        if cells[0] < 8 or cells[1] < 8:
            raise ValueError(f"cells must be at least (8, 8), got {cells}")
        self.camera_id = camera_id
        self.zone = None if zone is None else tuple(int(v) for v in zone)
        self.belt_axis = belt_axis
        self.cells = cells
        self.min_contrast = float(min_contrast)
        self.noise_k = float(noise_k)
        self.learning_rate = float(learning_rate)
        self.absorb_after = int(absorb_after)
        self.min_area = float(min_area)
        self.join_gap = float(join_gap)
        self.zone_margin = zone_margin
        self.max_missed = int(max_missed)
        self.max_tracks = int(max_tracks)
        self.frame_size: tuple[int, int] | None = None
        if frame_size is not None:
            self._setup(tuple(frame_size))  # type: ignore[arg-type]

    @classmethod
    def from_camera(
        cls, camera: "CameraConfig", frame_size: tuple[int, int] | None = None, **options: object
    ) -> "PartTracker":
        """The tracker for ``camera`` (one with ``track_parts``): its zone, and its frame size from
        ``frame_size``, else its ``resize``, else its first frame. ``options``: the keyword arguments above."""
        size = frame_size or (tuple(camera.resize) if camera.resize else None)
        return cls(camera.id, camera.zone, size, **options)  # type: ignore[arg-type]

    @property
    def zone_px(self) -> Box | None:
        """The zone in use, in frame pixels (None until the frame size is known)."""
        return getattr(self, "_zone", None)

    # --- geometry ---------------------------------------------------------------------------

    def _setup(self, size: tuple[int, int]) -> None:
        width, height = size
        if self.zone is None:
            side = min(width, height)
            zone = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
        else:
            zone = self.zone
            if not (zone[2] <= width and zone[3] <= height):
                raise ValueError(f"zone {zone} does not lie inside a {width}x{height} frame")
        self.frame_size = (width, height)
        self._zone: Box = zone  # type: ignore[assignment]
        length, breadth = (width, height) if self.belt_axis == "x" else (height, width)
        # the grid works in belt coordinates: columns run along the belt, rows across it
        self._gw, self._gh = min(self.cells[0], length), min(self.cells[1], breadth)
        self._sx, self._sy = length / self._gw, breadth / self._gh  # frame pixels per cell
        self._join = int(np.ceil(self.join_gap / self._sx))  # cells
        if self.zone_margin is None:
            mx, my = (self._sx, self._sy) if self.belt_axis == "x" else (self._sy, self._sx)
        else:
            mx = my = float(self.zone_margin)
        self._margin = (mx, my)
        z0, z1 = (zone[0], zone[2]) if self.belt_axis == "x" else (zone[1], zone[3])
        self._zone_len = (z1 - z0) / self._sx  # zone length along the belt, in cells
        self._min_cells = self.min_area * (zone[2] - zone[0]) * (zone[3] - zone[1]) / (self._sx * self._sy)
        self._bg: np.ndarray | None = None
        self._reset_tracks()

    def _reset_tracks(self) -> None:
        self._tracks: list[_Track] = []
        self._belt_speed: float | None = None
        self._last_seq: int | None = None

    def _grid(self, image: np.ndarray) -> np.ndarray:
        """The frame as (channels, rows across the belt, columns along it), float32."""
        if self.belt_axis == "y":
            image = np.ascontiguousarray(image.swapaxes(0, 1))
        # a cell averages every pixel along the belt but only every other row across it when its
        # rows are many: reading half the frame halves the cost, and a part spans many rows.
        # Rows of the image, not of the frame: a reduced copy has fewer per cell.
        row_step = max(1, int(image.shape[0] / self._gh // 4))
        small = cv2.resize(image[::row_step], (self._gw, self._gh), interpolation=cv2.INTER_AREA)
        if small.ndim == 2:
            return small[None].astype(np.float32)
        return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32)

    def _box(self, blob: _Blob) -> Box:
        a0, a1 = int(round(blob.lo * self._sx)), int(round(blob.hi * self._sx))
        b0, b1 = int(round(blob.top * self._sy)), int(round(blob.bottom * self._sy))
        return (a0, b0, a1, b1) if self.belt_axis == "x" else (b0, a0, b1, a1)

    def _inside(self, box: Box) -> bool:
        (x0, y0, x1, y1), (mx, my) = self._zone, self._margin
        return box[0] >= x0 - mx and box[1] >= y0 - my and box[2] <= x1 + mx and box[3] <= y1 + my

    # --- one frame ------------------------------------------------------------------------------

    def update(
        self, image: np.ndarray, seq: int, header_part_id: str | None = None, frame_size: tuple[int, int] | None = None
    ) -> TrackedFrame:
        """Feed the camera's next frame (BGR or grey, as decoded) and say what it shows.

        ``seq``: the frame's ``ps-seq``. Ids derive from it, and a gap in it is belt travel
        the tracker did not see. A ``seq`` not above the last one (a restarted camera) or far
        beyond it starts the tracks afresh; the belt model is kept.
        ``header_part_id``: the frame's ``ps-part-id``, when the camera or a PLC names the part;
        it is the frame's part (source "header"), and the tracker still learns from the frame.
        A frame of another size than the last starts the tracker afresh.
        ``frame_size``: (width, height) of the frame when ``image`` is a reduced copy of it (a JPEG
        decoded at 1/2 or 1/4 scale, at least the grid's size): the grid is read from the copy,
        and boxes, zone and every length stay in the frame's pixels. None: ``image`` is the frame.
        """
        if header_part_id is not None and not _ID_RE.match(header_part_id):
            raise ValueError(f"part id {header_part_id!r} is not an id ({ID_PATTERN})")
        height, width = image.shape[:2]
        size = tuple(frame_size) if frame_size is not None else (width, height)
        if self.frame_size != size:
            self._setup(size)  # type: ignore[arg-type]
        last = self._last_seq
        if last is not None and not 0 < seq - last <= 10 * (self.max_missed + 1):
            speed = self._belt_speed
            self._reset_tracks()
            self._belt_speed = speed if seq > last else None
        self._last_seq = seq

        small = self._grid(image)
        ready = self._bg is not None
        if not ready:
            self._seed(small)
        blobs = self._find(small)
        for blob in blobs:
            blob.box = self._box(blob)
            blob.in_zone = not (blob.clip_lo or blob.clip_hi or blob.edge) and self._inside(blob.box)
        self._learn(small, blobs)
        found = self._follow(blobs, seq)

        inside = sorted((t for t in found if t.blob.in_zone), key=lambda t: t.zone_seq)
        box = inside[0].blob.box if inside else None
        if header_part_id is not None:
            return TrackedFrame(seq, header_part_id, "header", box, len(found), ready)
        if not inside:
            return TrackedFrame(seq, None, None, None, len(found), ready)
        return TrackedFrame(seq, inside[0].part_id, "tracker", box, len(found), ready)

    # --- the belt -------------------------------------------------------------------------------

    def _seed(self, small: np.ndarray) -> None:
        """The first background: rows uniform along the belt are belt, the others interpolated from them."""
        planes, gh, gw = small.shape
        smooth = np.stack([cv2.blur(p, (5, 1), borderType=cv2.BORDER_REFLECT) for p in small])
        med = np.median(smooth, axis=2, keepdims=True)
        dev = (np.abs(smooth - med) / np.maximum(med, 8.0)).max(axis=0)
        uniform = (dev > 2 * self.min_contrast + 0.05).mean(axis=1) < 0.05
        # the edge rows of a part may look uniform: trust a row only when its neighbours are too
        trusted = uniform.copy()
        for k in (1, 2):
            trusted[k:] &= uniform[:-k]
            trusted[:-k] &= uniform[k:]
        bg = small.copy()
        good = np.flatnonzero(trusted)
        if 0 < len(good) < gh:
            # each row from the nearest belt rows above and below, weighted by distance
            rows = np.arange(gh)
            upper = np.clip(np.searchsorted(good, rows), 1, len(good) - 1) if len(good) > 1 else np.zeros(gh, int)
            a, b = good[upper - 1] if len(good) > 1 else good[upper], good[upper]
            w = np.clip((rows - a) / np.maximum(b - a, 1), 0.0, 1.0).astype(np.float32)[None, :, None]
            bg = small[:, a] * (1 - w) + small[:, b] * w
        self._bg = np.ascontiguousarray(bg, dtype=np.float32)
        self._count = np.ones((gh, gw), np.float32)
        self._settled = False  # every cell has been learned 1/learning_rate times
        self._stuck = np.zeros((gh, gw), np.uint16)
        self._belt_cells = np.ones((gh, gw), bool)
        self._part_rows = np.zeros(gh, bool)
        self._runs = np.ones((gh, gw), np.float32)  # per cell: how surely the belt's texture runs over it
        self._last_moving = np.zeros(gw, np.float32)
        self._last_lum = np.zeros((gh, gw), np.float32)
        self._active = np.zeros(gw, bool)
        self._follows = np.zeros((gh, 0), np.float32)
        self._gain = np.ones((planes, 1, 1), np.float32)
        # the noise, from neighbouring belt rows (each as noisy as a cell against the model)
        pairs = good[:-1][np.diff(good) == 1]
        if len(pairs):
            step = np.abs(small[:, pairs + 1] - small[:, pairs]).max(axis=0)
            self._noise = float(np.median(step)) / np.sqrt(3.0) + 0.1  # as after the 3-cell average
        else:
            self._noise = 0.0  # grey levels, per cell: measured on the next frame
        self._seeded_now = True
        self._fg = np.zeros((gh, gw), bool)

    def _find(self, small: np.ndarray) -> list[_Blob]:
        assert self._bg is not None
        bg = self._bg
        planes, gh, gw = small.shape
        sample = np.flatnonzero(self._belt_cells.ravel())[::3]  # last frame's belt cells, every third
        if len(sample) < 0.03 * gh * gw:
            sample = np.arange(0, gh * gw, 3)
        # lighting: per channel, the median ratio of frame to belt model on those cells
        ratio = small.reshape(planes, -1)[:, sample] / np.maximum(bg.reshape(planes, -1)[:, sample], 1.0)
        half = ratio.shape[1] // 2
        self._gain = np.partition(ratio, half, axis=1)[:, half].reshape(planes, 1, 1).astype(np.float32)
        expected = np.maximum(bg * self._gain, 4.0)
        resid = small / expected - 1.0
        still = np.abs(resid).max(axis=0)
        # sensor noise is so many grey levels: relative to a dark cell (a rail, a shadow) it is more
        level = np.minimum.reduce(expected) if planes > 1 else expected[0]
        floor = np.maximum(self.min_contrast, self.noise_k * self._noise / level)
        # texture moving with the belt, per column, measured on the rows that are belt: not where
        # parts were on the last frame, nor mostly differing now (a part that just came)
        busy = (still > floor).mean(axis=1)
        rows = (busy < 0.35) & ~self._part_rows
        if rows.sum() < max(4, gh // 5):  # parts everywhere: the rows with the fewest differing cells
            rows = busy <= np.partition(busy, int(0.4 * gh))[int(0.4 * gh)]
        lum_all = resid.mean(axis=0)
        # the median, per column, of those rows' cells that the texture runs over: still cells
        # (rails, guides, a thing learned into the belt) have no say, however many they are (they
        # are pushed to both ends in turn, so the middle stays the middle of the rest, give or take one)
        runs = self._runs[rows] >= 0.5
        ends = np.where(np.arange(len(runs)) % 2 == 0, np.inf, -np.inf).astype(np.float32)[:, None]
        lum = np.where(runs, lum_all[rows], ends)
        moving = np.partition(lum, len(lum) // 2, axis=0)[len(lum) // 2]
        moving = np.where((runs.sum(axis=0) >= 3) & np.isfinite(moving), moving, 0.0).astype(np.float32)
        # which cells the texture runs over: where it changed since the last frame, a belt cell's
        # difference changed by as much, a still thing's (a rail, a guide, a thing left lying) not
        # (judged in _learn, on the cells no moving part covers)
        change = moving - self._last_moving
        self._active = np.abs(change) > 2 * floor.min(axis=0)
        delta = lum_all[:, self._active] - self._last_lum[:, self._active]
        self._follows = (np.abs(delta - change[self._active]) < np.abs(delta)).astype(np.float32)
        self._last_moving, self._last_lum = moving, lum_all
        moved = np.abs(resid - moving).max(axis=0)
        diff = np.minimum(still, moved)
        # the belt model learns the frame with its moving texture shifted back to where the model
        # has it, on the cells the texture runs over
        self._texture = np.where(self._runs >= 0.5, 1.0 + moving, 1.0).astype(np.float32)
        # judge each cell with its neighbours across the belt (not along it, where the next part follows)
        sharp = diff
        diff = cv2.blur(diff, (1, 3), borderType=cv2.BORDER_REPLICATE)
        if self._seeded_now:
            self._seeded_now = False  # the seed frame matches itself: no noise to measure
        else:
            cells = diff.ravel()[sample] * level.ravel()[sample]
            noise = float(np.partition(cells, len(cells) // 2)[len(cells) // 2]) + 0.1
            self._noise = noise if self._noise == 0.0 else 0.7 * self._noise + 0.3 * noise
            floor = np.maximum(self.min_contrast, self.noise_k * self._noise / level)
        fg = diff > floor
        self._fg = fg
        fg8 = cv2.morphologyEx(fg.view(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 1), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(fg8, connectivity=8)
        # regions that overlap along the belt and nearly touch across it are one part (a
        # low-contrast part shows as separate features); specks of a few cells are noise
        stats = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= 4].tolist()
        spans = [[x, x + w, y, y + h, a] for x, y, w, h, a in stats]
        if len(spans) > 64:  # a frame of specks: the largest regions are enough
            spans = sorted(spans, key=lambda s: -s[4])[:64]
        reach = self._join
        joined = True
        while joined:
            joined, groups = False, []
            for s in spans:
                for g in groups:
                    if s[0] <= g[1] + reach and g[0] <= s[1] + reach and s[2] <= g[3] + 2 and g[2] <= s[3] + 2:
                        g[:] = [min(g[0], s[0]), max(g[1], s[1]), min(g[2], s[2]), max(g[3], s[3]), g[4] + s[4]]
                        joined = True
                        break
                else:
                    groups.append(s)
            spans = groups
        blobs = []
        for lo, hi, top, bottom, area in sorted(spans):
            if area < self._min_cells:
                continue
            # the average across the belt spreads a part by a cell: its extent across is where
            # the cells themselves differ
            hits = np.flatnonzero((sharp[top:bottom, lo:hi] > floor[top:bottom, lo:hi]).sum(axis=1) >= 2)
            if len(hits):
                top, bottom = top + int(hits[0]), top + int(hits[-1]) + 1
            blobs.append(_Blob(lo, hi, top, bottom, lo <= 0, hi >= gw, edge=top <= 0 or bottom >= gh))
        return blobs

    def _learn(self, small: np.ndarray, blobs: list[_Blob]) -> None:
        assert self._bg is not None
        held = self._fg.copy()  # what parts hold: their cells and boxes
        covered = self._fg.copy()  # and the belt kept from learning: a cell more around each box
        for b in blobs:
            held[b.top : b.bottom, b.lo : b.hi] = True
            covered[max(0, b.top - 1) : b.bottom + 1, max(0, b.lo - 1) : b.hi + 1] = True
        # held for too long without moving: belt after all (a wrong seed, a thing left lying)
        stuck = self._stuck
        np.minimum(stuck, self.absorb_after + 1, out=stuck)
        stuck += 1
        stuck *= held
        learn = ~covered
        if self._settled:
            rate = learn * np.float32(self.learning_rate)
        else:  # the first frames count fully: rate 1/n
            rate = learn * np.maximum(1.0 / (self._count + 1.0), self.learning_rate).astype(np.float32)
            self._count += learn
            self._settled = bool(self._count.min() * self.learning_rate >= 1.0)
        absorb = stuck > self.absorb_after
        if absorb.any():  # taken in quickly, once decided, as it looks: a thing that stays put
            rate = np.where(absorb, np.float32(0.25), rate)
            self._runs[absorb] = 0.0
            self._texture[absorb] = 1.0
        self._bg += rate * (small / (self._gain * self._texture) - self._bg)
        # does the texture run over a cell? Judged where no moving part covers it, now or before
        judged = ((~covered & self._belt_cells) | absorb)[:, self._active]
        if judged.any():
            runs = self._runs[:, self._active]
            self._runs[:, self._active] = np.where(judged, runs + 0.2 * (self._follows - runs), runs)
        self._belt_cells = ~covered
        self._part_rows = covered.mean(axis=1) > 0.25  # where the parts are: rows mostly covered

    # --- tracks ---------------------------------------------------------------------------------

    def _follow(self, blobs: list[_Blob], seq: int) -> list[_Track]:
        """Match the frame's blobs to the tracks; returns the tracks found on this frame."""
        gate = 0.15 * self._zone_len
        pairs = []
        for ti, t in enumerate(self._tracks):
            speed = t.velocity if t.velocity is not None else (self._belt_speed or 0.0)
            dt = seq - t.seq
            for bi, b in enumerate(blobs):
                d = _edge_distance(t.blob, b, speed * dt)
                if d <= gate + 0.5 * abs(speed) * dt:
                    pairs.append((d, ti, bi))
        pairs.sort()
        matched: dict[int, int] = {}
        taken: set[int] = set()
        for _, ti, bi in pairs:
            if ti not in matched and bi not in taken:
                matched[ti] = bi
                taken.add(bi)
        found = []
        for ti, t in enumerate(self._tracks):
            if ti not in matched:
                t.missed += 1
                continue
            b = blobs[matched[ti]]
            moved = _edge_motion(t.blob, b)
            if moved is not None:
                v = moved / (seq - t.seq)
                t.velocity = v if t.velocity is None else 0.5 * (t.velocity + v)
                self._belt_speed = t.velocity if self._belt_speed is None else 0.8 * self._belt_speed + 0.2 * t.velocity
            t.blob, t.seq, t.missed = b, seq, 0
            found.append(t)
        for bi, b in enumerate(blobs):
            if bi not in taken:
                t = _Track(b, seq)
                self._tracks.append(t)
                found.append(t)
        for t in found:
            if t.blob.in_zone and t.part_id is None:
                t.part_id, t.zone_seq = _part_id(self.camera_id, seq), seq
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed][-self.max_tracks :]
        return found


def _edge_distance(t: _Blob, b: _Blob, shift: float) -> float:
    """How far ``b`` lies from where ``t`` should be now, on the edges that no frame border cuts."""
    ds = []
    if not (t.clip_lo or b.clip_lo):
        ds.append(abs(b.lo - t.lo - shift))
    if not (t.clip_hi or b.clip_hi):
        ds.append(abs(b.hi - t.hi - shift))
    if ds:
        return min(ds)
    return abs((b.lo + b.hi) - (t.lo + t.hi) - 2 * shift) / 2  # both cut: it fills the view


def _edge_motion(t: _Blob, b: _Blob) -> float | None:
    moves = []
    if not (t.clip_lo or b.clip_lo):
        moves.append(b.lo - t.lo)
    if not (t.clip_hi or b.clip_hi):
        moves.append(b.hi - t.hi)
    return sum(moves) / len(moves) if moves else None


def largest_reduction(frame_size: tuple[int, int], cells: tuple[int, int] = GRID_CELLS, belt_axis: str = "x") -> int:
    """The largest JPEG decode reduction (1, 2, 4 or 8) whose image still has a pixel for every cell of the grid."""
    width, height = frame_size
    length, breadth = (width, height) if belt_axis == "x" else (height, width)
    factor = 1
    while factor < 8 and length // (2 * factor) >= min(cells[0], length) and breadth // (2 * factor) >= min(
            cells[1], breadth):
        factor *= 2
    return factor


def _part_id(camera_id: str, seq: int) -> str:
    suffix = f".{seq}"
    return camera_id[: 64 - len(suffix)] + suffix
