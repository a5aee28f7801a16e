"""What the encoder reads of a frame: the whole frame, or the part cut out of it.

The whole frame is read as every CLIP reads an image: its central square at the encoder's
size (128 px for the default bundle, so a 300 px part becomes 80 px and a 9 px scratch 2 px).
The part view is a square around the part's box, a little larger than the part, at the same
encoder size: the part fills the view, at 1.4x the whole frame's resolution for the
default line. A bundle with a part view scores a tracked part's frame from both views
(``Bundle.score_frames(..., boxes=...)``): the whole frame keeps what surrounds the part
and varies from frame to frame as the part moves, the part view sees it at the finer scale.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
PART_MARGIN = 0.06  # of the box's longer side, on every side


def part_crop(image: np.ndarray, box: Box, margin: float = PART_MARGIN, scale: float = 1.0) -> np.ndarray:
    """A square cut of ``image`` centred on ``box``, its side the box's longer side plus ``margin`` on each side.

    Where the square leaves the frame the border pixels are repeated, so a part at the edge
    of the frame is still centred in its view. ``scale``: image pixels per frame pixel, when
    ``image`` is a reduced copy of the frame (a JPEG decoded at 1/2 size: 0.5) and ``box`` is
    in frame pixels; the square is placed in frame pixels, then scaled, so it covers the
    same part of the scene as the full frame's.
    """
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin))))
    left = int(round((x0 + x1) / 2 - side / 2))
    top = int(round((y0 + y1) / 2 - side / 2))
    if scale != 1.0:
        left, top, side = int(round(left * scale)), int(round(top * scale)), max(1, int(round(side * scale)))
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    return image[top : top + side, left : left + side]
