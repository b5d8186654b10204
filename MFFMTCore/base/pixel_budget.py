"""The pixel budget of one input: how much of an image MFFMT decodes, checked before decoding.

An 875 KB PNG can hold 30000x30000 pixels, and a 6.6 MB RLE clip 400 frames of 1024x1024; the
header says so before any pixel is decoded (:func:`MFFMTCore.files.check_pixel_budget`). A frame is
processed whole in float32 (about 25 bytes a pixel with its maps; 1.3 GB peak measured for a grey
frame at the limit, 1.4 GB for a colour one), so :data:`MAX_FRAME_PIXELS` is 2**25 (5792x5792). A
clip's decoded pixels are held whole (its maps are not), so :data:`MAX_INPUT_BYTES` is 1.5 GiB: a
1024x1024 clip of 1536 grey or 512 colour frames. The environment variables
``MFFMT_MAX_FRAME_PIXELS`` and ``MFFMT_MAX_INPUT_BYTES`` change them; ``mffmt serve`` bounds its
attachments by the same input budget. (Torch- and SimpleITK-free: the worker's client imports it.)
"""

from __future__ import annotations

import os

from MFFMTCore.errors import MFFMTError

MAX_FRAME_PIXELS = 1 << 25
MAX_INPUT_BYTES = 3 << 29


def _budget(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise MFFMTError(name, f"must be a positive whole number, got {text!r}")
    return value


def frame_pixel_budget() -> int:
    """The most pixels one frame may have: ``MFFMT_MAX_FRAME_PIXELS``, else :data:`MAX_FRAME_PIXELS`."""
    return _budget("MFFMT_MAX_FRAME_PIXELS", MAX_FRAME_PIXELS)


def input_byte_budget() -> int:
    """The most decoded bytes one input may take: ``MFFMT_MAX_INPUT_BYTES``, else :data:`MAX_INPUT_BYTES`."""
    return _budget("MFFMT_MAX_INPUT_BYTES", MAX_INPUT_BYTES)
