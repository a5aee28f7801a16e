"""The model runner: what the inference worker's model and decode threads run, frame by frame and batch by batch.

The worker (``inference/worker.py``) decides what runs and when: Kafka, the dynamic batcher,
acknowledgements and commits. The runner runs it (the split vLLM makes between its scheduler and
its model runner)::

    decode threads  ModelRunner.decode     JPEG -> BGR (``decode_jpeg``, at 1/2, 1/4 or 1/8 size when the encoder
                                           reads no more) -> the encoder's uint8 square (resize, crop)
    model thread    ModelRunner.decode_batch  on CUDA with torchvision (``inference.gpu_jpeg_decode``), instead of
                                           ``decode``: the batch's JPEGs in one nvJPEG call, resized and
                                           cropped on the GPU (inference/jpeg_batch.py); the CPU path for
                                           a frame nvJPEG should not or will not take
                    ModelRunner.find_part  the camera's tracker (model/tracker.py), frame by frame in order:
                                           the part in the zone, or none (the frame is not scored)
                    ModelRunner.part_view  the part cut out of the frame (its square), when the bundle reads it
                    ModelRunner.score      the batch's squares normalised at once, on the model's device ->
                                           encoder once per view of each frame (the whole frame; the
                                           part view too when the bundle has one) -> every question of
                                           the frame's line
                    ModelRunner.result     scores + thresholds (+ thumbnail) -> one InspectionResult

``decode`` is safe to call from several threads at once; ``find_part`` and ``score`` are called
by the one model thread, which sees each camera's frames in their order.

Reduced decoding (``inference.reduced_decode``): libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of
its size, scaling in the DCT before any pixel exists, which costs about half a full decode and
leaves less to resize. The runner uses the largest reduction that keeps the frame's shortest edge
at or above the encoder's input (``FramePreprocessor.reduction_for``: 640x480 -> 320x240 for the
default 128 px encoder), and, for a camera that tracks parts, a pixel for every cell of the
tracker's grid. Everything downstream keeps the frame's own coordinates: the tracker reads its
grid from the reduced image and boxes in frame pixels; the part view's square is placed in frame
pixels and scaled to the reduced image, or cut from a full decode when the reduced one would have
fewer pixels across the part than the encoder reads; every square is resized as the full frame's
would be (the interpolation follows the scale from the camera's frame).
``load_model`` loads the configured bundle, with one clear message when it cannot.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import simplejpeg
import torch

from inference.jpeg_batch import select_batch_decoder
from model.tracker import PartTracker, largest_reduction
from schemas.config import CameraConfig, InferenceSettings, LineConfig, PatchsightConfig
from schemas.frame import FrameMessage
from schemas.part import PartObservation
from schemas.result import FrameRef, InspectionResult, QuestionScore, ResultStatus, Timing

if TYPE_CHECKING:
    from model.bundle import Bundle

THUMBNAIL_JPEG_QUALITY = 80
# cv2.imdecode flags by reduction: libjpeg's DCT scaling
_IMREAD = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class Decoded:
    """A decoded frame: what the model thread needs of it."""

    image: np.ndarray  # BGR, the frame at 1/reduction of its size
    reduction: int  # 1: the frame itself
    # the encoder's (S, S, 3) RGB uint8 input, normalised per batch in ``score``; a tensor on the model's
    # device when decoded there (``decode_batch``)
    square: np.ndarray | torch.Tensor
    decode_s: float


class ModelRunner:
    """Decode, score and report frames for one worker, with the bundle and the lines it serves."""

    def __init__(
        self, bundle: "Bundle", lines: dict[str, LineConfig], settings: InferenceSettings, worker_id: str
    ) -> None:
        self.bundle = bundle
        self.lines = lines
        self.settings = settings
        self.worker_id = worker_id
        self.thresholds = {line_id: bundle.thresholds_for(line.questions) for line_id, line in lines.items()}
        # A part is judged on the aggregate of its frames, against thresholds calibrated for that.
        self.part_thresholds = {line_id: bundle.part_thresholds_for(line.questions) for line_id, line in lines.items()}
        self.cameras: dict[str, CameraConfig] = {c.id: c for line in lines.values() for c in line.cameras}
        self.trackers: dict[str, PartTracker] = {}  # one per camera, made at its first frame
        self.device = bundle.encoder.device
        self.preprocess = bundle.encoder.preprocess
        self._staging: torch.Tensor | None = None  # pinned host buffer for host -> GPU copies
        # JPEGs decoded a batch at a time on the GPU (None: one frame at a time by the decode threads)
        self.batch_decoder, self.jpeg_decode_path = select_batch_decoder(settings.gpu_jpeg_decode, self.device)

    # --- decode threads ------------------------------------------------------------

    def reduction(self, msg: FrameMessage) -> int:
        """How much smaller than the frame its JPEG is decoded (1: full size): as much as the encoder, and
        the part tracker of a camera that tracks parts, can read from."""
        if not self.settings.reduced_decode:
            return 1
        reduction = self.preprocess.reduction_for(msg.width, msg.height)
        camera = self.cameras.get(msg.camera_id)
        if camera is not None and camera.track_parts:
            reduction = min(reduction, largest_reduction((msg.width, msg.height)))
        return reduction

    def decoded_bytes(self, msg: FrameMessage) -> int:
        """Memory a frame's decoded image and square hold until its result is built (for the in-flight cap)."""
        reduction = self.reduction(msg)
        side = self.preprocess.image_size
        return -(-msg.width // reduction) * -(-msg.height // reduction) * 3 + side * side * 3

    def decode(self, msg: FrameMessage) -> Decoded | str:
        """JPEG -> BGR -> the encoder's uint8 square, or the reason it cannot be (the frame is dead-lettered)."""
        start = time.perf_counter()
        # [reliability, issue #9] OpenCV allocates whatever size the JPEG's frame header claims before
        # reading any pixel data: a 300-byte record claiming 30000x30000 cost 5.9 GB and 16 s. Check
        # the claim against the (bounded) ps-width/ps-height headers first.
        header = jpeg_header(msg.payload)
        if header is None:
            return "the payload is not a JPEG (no frame header before the image data)"
        if (header.width, header.height) != (msg.width, msg.height):
            return f"the JPEG is {header.width}x{header.height}, the headers say {msg.width}x{msg.height}"
        reduction = self.reduction(msg)
        try:
            image = decode_jpeg(msg.payload, header, reduction)
            if image is None:
                return "the payload is not a decodable JPEG"
            square = self.preprocess.crop(image, reduction)
        except (cv2.error, ValueError) as exc:
            return f"decoding failed: {exc}"
        return Decoded(image, reduction, square, time.perf_counter() - start)

    # --- the model thread ------------------------------------------------------------

    def decode_batch(self, msgs: list[FrameMessage]) -> list[Decoded | str]:
        """``decode`` for a batch's frames at once on the model's device (``batch_decoder``: nvJPEG on CUDA).

        The squares stay on the device; each frame's image (what the tracker, the part view and the
        thumbnail read) comes back to the host at the size ``decode`` gives it, box-averaged from the
        full decode where ``decode`` lets libjpeg scale in the DCT (within a grey level of it). A
        frame the batched decoder should not or will not take (not baseline, CMYK, an Exif
        orientation, refused by nvJPEG) goes through ``decode`` instead: no frame is lost to it.
        """
        assert self.batch_decoder is not None, "decode_batch needs a batch decoder (gpu_jpeg_decode on CUDA)"
        out: list[Decoded | str] = [""] * len(msgs)
        batched = []
        for i, msg in enumerate(msgs):
            header = jpeg_header(msg.payload)
            if header is not None and (header.width, header.height) == (msg.width, msg.height) and header.nvjpeg_decodable:
                batched.append(i)
            else:
                out[i] = self.decode(msg)  # also says why a frame is not a JPEG of its declared size
        start = time.perf_counter()
        made = {}
        for i, rgb in zip(batched, self.batch_decoder.decode([msgs[i].payload for i in batched])):
            if rgb is not None:
                reduction = self.reduction(msgs[i])
                made[i] = (host_image(rgb, reduction), reduction, self.preprocess.crop_tensor(rgb))
        share = (time.perf_counter() - start) / max(len(made), 1)  # one call for the batch: a share each
        for i in batched:
            out[i] = Decoded(*made[i], share) if i in made else self.decode(msgs[i])
        return out

    def tracks_parts(self, msg: FrameMessage) -> bool:
        """Whether the frame's camera is judged per part (else every frame on its own, k-of-n)."""
        return self.cameras[msg.camera_id].track_parts

    def find_part(self, msg: FrameMessage, decoded: Decoded) -> PartObservation | None:
        """The part wholly inside the camera's zone on this frame (None: no part), in stream order; its box in frame pixels."""
        size = (msg.width, msg.height)
        tracker = self.trackers.get(msg.camera_id)
        if tracker is None:
            tracker = self.trackers[msg.camera_id] = PartTracker.from_camera(self.cameras[msg.camera_id], frame_size=size)
        seen = tracker.update(decoded.image, msg.seq, header_part_id=msg.part_id, frame_size=size)
        return seen.observation(self.bundle.part_aggregate)

    def part_view(self, msg: FrameMessage, decoded: Decoded, part: PartObservation | None) -> np.ndarray | None:
        """The encoder's square of the frame's part view, when the bundle reads one and the tracker boxed the part."""
        if self.bundle.part_head is None or part is None or part.box is None:
            return None
        image, box, scale = decoded.image, part.box, 1.0
        if decoded.reduction > 1:
            scale = image.shape[1] / msg.width
            if max(box[2] - box[0], box[3] - box[1]) * scale < self.preprocess.image_size:
                # the reduced frame has fewer pixels across the part than the view reads: cut it from the full frame
                image, scale = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR), 1.0
        return self.preprocess.crop(self.bundle.part_views([image], [box], scale)[0], 1 / scale)

    def score(
        self, line_ids: list[str], squares: list[np.ndarray], part_views: list[np.ndarray | None] | None = None
    ) -> list[np.ndarray]:
        """One batch: each frame through the encoder once, then every question of its line; a score row per frame.

        ``squares``: the frames' encoder inputs as ``decode`` made them (uint8, normalised here as one batch).
        ``part_views``: the squares of the part cut out of each frame, as ``part_view`` made them (None
        where no part is tracked); with a bundle that reads the part view, those go through the
        encoder and its part head too.
        """
        encoded = self.bundle.encoder(self._to_device(squares), pooled=False)
        by_line: dict[str, list[int]] = defaultdict(list)
        for i, line_id in enumerate(line_ids):
            by_line[line_id].append(i)
        scores: dict[int, np.ndarray] = {}
        for line_id, rows in by_line.items():
            line_scores = self.bundle.score_encoded(encoded.select(rows), self.lines[line_id].questions)
            scores.update(zip(rows, line_scores))
        rows = [i for i, view in enumerate(part_views or ()) if view is not None]
        if self.bundle.part_head is not None and rows:
            # not through the staging buffer: the frames' copy from it may still be in flight
            view_squares = torch.from_numpy(np.stack([part_views[i] for i in rows]))
            pixels_of_views = self.preprocess.normalise(view_squares.to(self.device))
            views = self.bundle.encoder(pixels_of_views, pooled=False)
            by_line = defaultdict(list)
            for at, i in enumerate(rows):
                by_line[line_ids[i]].append((at, i))
            for line_id, pairs in by_line.items():
                ats, frames = zip(*pairs)
                mixed = self.bundle.with_part_view(np.stack([scores[i] for i in frames]), views.select(list(ats)),
                                                   self.lines[line_id].questions)
                scores.update(zip(frames, mixed))
        return [scores[i] for i in range(len(line_ids))]

    def _to_device(self, squares: list[np.ndarray]) -> torch.Tensor:
        """The batch's uint8 squares -> normalised pixels on the model's device (a quarter of float32's bytes cross)."""
        if any(isinstance(square, torch.Tensor) for square in squares):  # decoded on the device (decode_batch)
            on_device = [s if isinstance(s, torch.Tensor) else torch.from_numpy(s).to(self.device) for s in squares]
            return self.preprocess.normalise(torch.stack(on_device))
        if self.device.type != "cuda":
            return self.preprocess.normalise(torch.from_numpy(np.stack(squares)))
        # Page-locked staging lets the copy run asynchronously; the next batch reuses the
        # buffer only after score_encoded has synchronised on this one's scores.
        if self._staging is None or self._staging.shape[0] < len(squares):
            self._staging = torch.empty((self.settings.max_batch, *squares[0].shape), dtype=torch.uint8,
                                        pin_memory=True)
        staged = self._staging[: len(squares)]
        np.stack(squares, out=staged.numpy())
        return self.preprocess.normalise(staged.to(self.device, non_blocking=True))

    # --- results ---------------------------------------------------------------------

    def result(
        self,
        msg: FrameMessage,
        status: ResultStatus,
        *,
        skip_reason: str | None = None,
        scores: np.ndarray | None = None,
        timing: Timing | None = None,
        image: np.ndarray | None = None,
        part: PartObservation | None = None,
        frame: FrameRef | None = None,
    ) -> InspectionResult:
        """``frame``: where ``msg`` lies on the frames topic, so the alert service can read it back as evidence."""
        line = self.lines[msg.line_id]
        question_scores = []
        if scores is not None:
            thresholds = self.part_thresholds[line.id] if part is not None else self.thresholds[line.id]
            for question, score, threshold in zip(line.questions, scores, thresholds):
                score = min(max(float(score), 0.0), 1.0)
                question_scores.append(QuestionScore(
                    question_id=question.id, score=score, threshold=float(threshold),
                    defect_type=question.defect_type, above_threshold=score >= threshold,
                ))
        thumbnail = None
        if image is not None and any(q.above_threshold for q in question_scores):
            thumbnail = thumbnail_jpeg_b64(image, self.settings.thumbnail_px)
        return InspectionResult(
            line_id=msg.line_id, camera_id=msg.camera_id, seq=msg.seq, capture_ns=msg.capture_ns,
            status=status, skip_reason=skip_reason, part=part, frame=frame, model_id=self.bundle.model_id,
            worker_id=self.worker_id, scores=question_scores, timing=timing or Timing(), thumbnail_jpeg_b64=thumbnail,
        )


# [reliability, issue #9] JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class JpegHeader(NamedTuple):
    """What a JPEG's markers say before its scan: its size, its coding process and its colour channels."""

    width: int
    height: int
    sof: int  # the start-of-frame marker: 0xC0 baseline, 0xC2 progressive, ...
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK/YCCK
    exif: bool  # an Exif segment: it may carry an orientation, which OpenCV applies

    @property
    def nvjpeg_decodable(self) -> bool:
        """Baseline or extended Huffman, grey or colour, no Exif: what the batched GPU path decodes as OpenCV would.

        Others (progressive, CMYK, an orientation to apply) go to the CPU path: nvJPEG's batched
        decoder does not promise them and torchvision applies no Exif orientation on the GPU.
        """
        return self.sof in (0xC0, 0xC1) and self.components in (1, 3) and not self.exif


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding; None if there is none before the scan."""
    header = jpeg_header(data)
    return None if header is None else (header.width, header.height)


def decode_jpeg(data: bytes, header: JpegHeader, reduction: int = 1) -> np.ndarray | None:
    """A JPEG -> the BGR uint8 array ``cv2.imdecode`` gives for it at 1/``reduction`` (1, 2, 4 or 8), pixel for pixel.

    simplejpeg (libjpeg-turbo's TurboJPEG API) runs the same IDCT and upsampling, so gives the
    same pixels, without ``imdecode``'s per-call overhead (0.9 of its CPU time for a 640x480
    frame at half size). OpenCV decodes what simplejpeg would not decode as it does: an Exif
    segment (OpenCV applies the orientation), CMYK, a damaged frame (simplejpeg refuses it,
    OpenCV decodes what it can of it). None: OpenCV could not decode it either.
    """
    if header.components in (1, 3) and not header.exif:
        try:
            return simplejpeg.decode_jpeg(data, "BGR", min_height=-(-header.height // reduction),
                                          min_width=-(-header.width // reduction), min_factor=reduction)
        except ValueError:
            pass
    return cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD[reduction])


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of a JPEG, without decoding; None if there is none before the scan."""
    if data[:2] != b"\xff\xd8":
        return None
    i, exif = 2, False
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header came first
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            exif = True
        if marker in _JPEG_SOF:
            if i + 10 > len(data) or length < 8:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return JpegHeader(width, height, marker, data[i + 9], exif)
        i += 2 + length
    return None


def host_image(rgb: torch.Tensor, reduction: int) -> np.ndarray:
    """A (3, H, W) RGB uint8 frame on a device -> the BGR array ``cv2.imdecode`` gives at 1/``reduction``, on the host.

    Box-averaged (torch's ``area``) where libjpeg would scale in the DCT: both average each
    reduction x reduction block; they differ by about 0.2 grey levels on average.
    """
    if reduction > 1:
        _, h, w = rgb.shape
        size = (-(-h // reduction), -(-w // reduction))  # libjpeg rounds a scaled size up
        rgb = torch.nn.functional.interpolate(rgb[None].float(), size=size, mode="area")[0].round_().to(torch.uint8)
    return rgb.flip(0).permute(1, 2, 0).contiguous().cpu().numpy()


def thumbnail_jpeg_b64(image: np.ndarray, px: int) -> str:
    h, w = image.shape[:2]
    scale = px / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_JPEG_QUALITY])
    return base64.b64encode(jpeg.tobytes()).decode() if ok else ""


# --- loading the model -------------------------------------------------------------------


class ModelLoadError(RuntimeError):
    """The configured model bundle cannot be loaded; the message says which file and why."""


def load_model(config: PatchsightConfig) -> "Bundle":
    from model.bundle import load_bundle

    path = Path(config.model.bundle)
    if not path.exists():
        raise ModelLoadError(
            f"model bundle {path} does not exist (model.bundle in the config, or PATCHSIGHT__MODEL__BUNDLE)"
        )
    try:
        bundle = load_bundle(path, config.model.device)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise ModelLoadError(f"cannot load model bundle {path} on device {config.model.device!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    anomaly = [f"{line.id}/{q.id}" for line in config.lines for q in line.questions if q.kind == "anomaly"]
    if anomaly and bundle.anomaly is None:
        raise ModelLoadError(f"model bundle {path} has no anomaly memory for the anomaly questions {', '.join(anomaly)}: "
                             "fit one with `patchsight model fit-anomaly`")
    bundle.encoder.eval()
    bundle.head.eval()
    return bundle
