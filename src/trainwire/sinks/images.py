"""Images for the sinks: a grid of samples as a uint8 array, and PNG bytes without an imaging library.

Sinks receive images as ``numpy.uint8`` arrays, ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), and
encode them as they need; the run record writes PNG with ``encode_png`` (zlib only), so a run
folder gets its images whether or not Pillow is installed.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import torch
from torch import Tensor


def grid(samples: Tensor, shape: tuple[int, int], *, columns: int | None = None, scale: int = 4,
         padding: int = 1) -> np.ndarray:
    """Lays ``samples`` (``[n, h*w]``, values in [0, 1]; clamped) out as a grey image of ``shape``-sized tiles.

    ``columns`` defaults to a square-ish grid; each pixel becomes ``scale`` × ``scale``; tiles are
    separated by ``padding`` black pixels (before scaling). Returns ``uint8 [H, W]``.
    """
    h, w = shape
    samples = samples.detach().float().cpu().clamp(0, 1).reshape(-1, h, w)
    n = len(samples)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    canvas = torch.zeros(rows * (h + padding) + padding, columns * (w + padding) + padding)
    for index, tile in enumerate(samples):
        top, left = padding + (index // columns) * (h + padding), padding + (index % columns) * (w + padding)
        canvas[top : top + h, left : left + w] = tile
    canvas = canvas.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return (canvas * 255).round().to(torch.uint8).numpy()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) array (8 bits per channel, no filter)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"an image is uint8 [H, W] or [H, W, 3]; got {image.dtype} {list(image.shape)}")
    height, width = image.shape[:2]
    colour = 0 if image.ndim == 2 else 2
    # Each scanline starts with its filter type (0: none).
    raw = b"".join(b"\x00" + row.tobytes() for row in image.reshape(height, -1))
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def image_file_name(key: str, epoch: int) -> str:
    """The file an image logged under ``key`` at ``epoch`` is written to (``val/samples`` -> ``val_samples_epoch0004.png``)."""
    return f"{key.replace('/', '_')}_epoch{epoch:04d}.png"
