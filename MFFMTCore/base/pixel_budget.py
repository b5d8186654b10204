"""The pixel budget of one input: how much of an image MFFMT decodes, checked before decoding.

An 875 KB PNG can hold 30000x30000 pixels, and a 6.6 MB RLE clip 400 frames of 1024x1024; the
header says so before any pixel is decoded (:func:`MFFMTCore.files.check_pixel_budget`). A frame is
processed whole in float32 (about 25 bytes a pixel with its maps; 1.3 GB peak measured for a grey
frame at the limit, 1.4 GB for a colour one), so :data:`MAX_FRAME_PIXELS` is 2**25 (5792x5792). A
clip's decoded pixels are held whole (its maps are not: they stream to their files), and a colour
or DICOM file's pixels are held twice while it is read (:func:`reading_copies`), so
:data:`MAX_INPUT_BYTES` is 1 GiB of pixels as reading holds them: with the model, one input then
stays under 2 GB (a 1024x1024 clip of 1024 grey frames, or 512 in DICOM, or 170 colour ones). The environment variables
``MFFMT_MAX_FRAME_PIXELS`` and ``MFFMT_MAX_INPUT_BYTES`` change them; ``mffmt serve`` bounds its
attachments by the same input budget. (Torch- and SimpleITK-free: the worker's client imports it.)
"""

from __future__ import annotations

import os

from MFFMTCore.errors import MFFMTError

MAX_FRAME_PIXELS = 1 << 25
MAX_INPUT_BYTES = 1 << 30


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


def reading_copies(components: int, dicom: bool = False) -> int:
    """Copies of its pixels that reading a file holds at once: 2 for a DICOM file (pydicom holds its
    pixel data beside the decoded array) and for a colour file (SimpleITK converts its reader's buffer:
    3.2 GB measured to read a 1.5 GiB RGB NRRD or MHA), else 1."""
    return 2 if dicom or components > 1 else 1
