"""A batch's JPEGs decoded at once on the model's device: nvJPEG through torchvision's ``decode_jpeg`` (issue #34).

On a GPU host the CPU decode pool is what limits the worker (a 640x480 frame costs about a
millisecond of a core to decode and resize). With ``inference.gpu_jpeg_decode: auto`` and the
model on CUDA, the model thread hands each batch's JPEGs to ``decode_jpeg(list, device="cuda")``
in one call, and the frames stay on the device for the resize, crop and normalisation.

torchvision is optional (``pip install 'patchsight[gpu]'``); ``select_batch_decoder`` says which
path a worker takes and why, and the worker logs it at start. This module only wraps the
library: which frames may go to it, and what becomes of a frame it refuses (the CPU path), is
``inference.runner.ModelRunner.decode_batch``.
"""

from __future__ import annotations

import torch

from schemas.config import GpuJpegDecode


class BatchJpegDecoder:
    """torchvision's ``decode_jpeg`` over a list of JPEGs, on ``device``; a frame it refuses comes back as None."""

    def __init__(self, device: torch.device) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device = device
        self._decode_jpeg = decode_jpeg
        self._rgb = ImageReadMode.RGB

    def decode(self, payloads: list[bytes]) -> list[torch.Tensor | None]:
        """Each JPEG as a (3, H, W) RGB uint8 tensor on the device, or None where the decoder refused it.

        One call for the batch; the call fails as a whole when one frame fails (torchvision
        returns no partial results), so then each frame is tried alone and only the frames that
        fail alone are refused.
        """
        if not payloads:
            return []
        encoded = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
        try:
            return list(self._decode_jpeg(encoded, mode=self._rgb, device=self.device))
        except RuntimeError:
            if len(encoded) == 1:
                return [None]
        out: list[torch.Tensor | None] = []
        for one in encoded:
            try:
                out.append(self._decode_jpeg([one], mode=self._rgb, device=self.device)[0])
            except RuntimeError:
                out.append(None)
        return out


def select_batch_decoder(mode: GpuJpegDecode, device: torch.device) -> tuple[BatchJpegDecoder | None, str]:
    """The batched decoder a worker uses (None: the CPU decode pool), and why, for the start log."""
    if mode == "off":
        return None, "cpu pool: inference.gpu_jpeg_decode is off"
    if device.type != "cuda":
        return None, f"cpu pool: the model runs on {device.type}"
    try:
        import torchvision
    except ImportError:
        return None, "cpu pool: torchvision is not installed (pip install 'patchsight[gpu]')"
    return BatchJpegDecoder(device), f"gpu batches: nvJPEG through torchvision {torchvision.__version__}"
