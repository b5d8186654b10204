"""The imaging region of an ultrasound frame: the rectangle holding the scan, without the screen around it.

A scanner's screen capture (a DICOM secondary capture, a PNG or JPEG export, a video grab) shows the
B-mode image inside a larger frame: black borders, a header bar, text (patient, preset, depth,
clock), body markers, a grey-scale bar, thumbnails. The network was trained on images of the scan,
so it is run on the scan's rectangle only and its maps are pasted back into the full frame (zero
outside). The rectangle comes from:

1. the DICOM Sequence of Ultrasound Regions when the file has a calibrated 2D tissue region of at
   least 32 pixels on a side (method ``"dicom"``; the largest of several; see :mod:`MFFMTCore.dicom_io`);
2. otherwise it is detected (method ``"detected"``) by :func:`detect_imaging_region`:

   - scan pixels are grey and textured: speckle gives every part of a scan a local standard
     deviation of several grey levels, where borders and panels are flat; strongly coloured pixels
     (coloured text, markers, colour bars) are not scan pixels;
   - in a clip, a pixel is textured when it is in any of up to 8 frames spread over the clip;
   - a morphological opening (a square about 1/40 of the frame's smaller side) removes text, lines,
     calipers and thin markers, whose strokes are thinner than that;
   - the largest connected region that remains is the scan; dark parts inside it (cysts, shadows)
     are kept by filling its holes; its bounding box (less the texture window's reach past the
     scan's edge) is the imaging region;
   - a side is only cut where the strip cut off is mostly black (at least 60% of its pixels at or
     below 8 of 255): screen borders are, with text and marks on them; dark deep tissue and
     acoustic shadows below a lesion are not, and are kept;
   - nothing is cropped when that box covers nearly all (98%) of both sides of the frame (an
     image that is already the scan), or when no region of at least 5% of the frame and 32 pixels
     (:data:`MFFMTCore.files.MIN_IMAGE_SIDE`) on a side is found (an image too flat or too small to
     tell; then the whole frame is used, as before).

What was cropped is reported with the result (:meth:`ImagingRegion.to_json`: box, method, margins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from MFFMTCore.base.spread import evenly
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import MIN_IMAGE_SIDE

if TYPE_CHECKING:
    from MFFMTCore.inference.frames import FrameStack

IMAGING_REGION_CHOICES = ("auto", "dicom", "none")
# The choices for frames that come without a DICOM header (a live stream).
STREAM_IMAGING_REGION_CHOICES = ("auto", "none")

# Local standard deviation (grey levels of 255) above which a pixel is textured like a scan.
_TEXTURE_STD = 3.0
# Window (pixels of the working resolution) over which the local standard deviation is taken.
_TEXTURE_WINDOW = 7
# Chroma (max - min of R, G, B, of 255) above which a pixel is an overlay, not grey scan.
_OVERLAY_CHROMA = 40.0
# A detected box covering this share of both frame sides is the whole frame: nothing is cropped.
_WHOLE_FRAME = 0.98
# Smallest share of the frame a detected scan may cover.
_MIN_AREA = 0.05
# Frames of a clip looked at.
_SAMPLED_FRAMES = 8
# Grey level (of 255) at or below which a pixel is black, and the share of black pixels a cut-off
# strip needs to be border: screen borders measured 0.72-1.0 (text on black), deep dark breast
# tissue 0-0.33 (BUSI and BUS-BRA validation images).
_BLACK = 8.0
_BORDER_BLACK_SHARE = 0.6
# Longest side of the working resolution (larger frames are subsampled for speed).
_WORKING_SIZE = 480


@dataclass(frozen=True)
class ImagingRegion:
    """The rectangle of a frame the network is run on.

    Args:
        box: (x, y, w, h) in pixels (x = column, y = row).
        frame_size: (width, height) of the full frame.
        method: ``"dicom"`` (Sequence of Ultrasound Regions) or ``"detected"``.
    """

    box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    method: str

    @property
    def margins(self) -> dict[str, int]:
        """Pixels cropped on each side."""
        x, y, w, h = self.box
        width, height = self.frame_size
        return {"left": x, "top": y, "right": width - x - w, "bottom": height - y - h}

    def to_json(self) -> dict:
        return {"box": list(self.box), "method": self.method, "cropped": self.margins}


def _working_frames(pixels: np.ndarray, components: int, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sampled frames as grey (n, h, w) scaled to 0-255, and their chroma (or None for grey input)."""
    count = pixels.shape[0]
    indices = evenly(count, _SAMPLED_FRAMES)
    frames = np.asarray(pixels[indices][:, ::step, ::step], dtype=np.float32)
    if components >= 3:
        colour = frames[..., :3]
        chroma = colour.max(axis=-1) - colour.min(axis=-1)
        grey = colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        grey = frames[..., 0] if components == 2 else frames
        chroma = None
    top = float(np.percentile(grey, 99.9)) if grey.size else 0.0
    scale = 255.0 / top if top > 0 else 1.0
    if chroma is not None:
        chroma = chroma * scale
    return grey * scale, chroma


def _is_border(strip: np.ndarray) -> bool:
    """Whether a strip cut off the frame is screen border: mostly black (text and marks may lie on it)."""
    return strip.size == 0 or float(np.mean(strip <= _BLACK)) >= _BORDER_BLACK_SHARE


def square_opening(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening of a 2D boolean mask by an odd ``size`` x ``size`` square, outside the mask
    counting as background (as ``ndimage.binary_opening``): as separable minimum and maximum
    filters, the same result several times faster than with a 2D structuring element."""
    eroded = ndimage.minimum_filter(mask, size=size, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=size, mode="constant", cval=0)


def detect_imaging_region(pixels: np.ndarray, components: int = 1) -> ImagingRegion | None:
    """Find the scan rectangle of a frame or clip (see the module docstring for the method).

    Args:
        pixels: (N, H, W) grey or (N, H, W, C) colour frames of one input, any numeric type.
        components: pixel components C (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).

    Returns:
        The region, or None when nothing should be cropped (the frame is the scan, or no scan was found).
    """
    height, width = pixels.shape[1:3]
    step = max(1, int(np.ceil(max(height, width) / _WORKING_SIZE)))
    grey, chroma = _working_frames(pixels, components, step)
    mean = ndimage.uniform_filter(grey, size=(1, _TEXTURE_WINDOW, _TEXTURE_WINDOW))
    square = ndimage.uniform_filter(grey * grey, size=(1, _TEXTURE_WINDOW, _TEXTURE_WINDOW))
    with np.errstate(invalid="ignore"):  # inf - inf in a non-finite frame, which the predictor refuses next
        texture = np.sqrt(np.maximum(square - mean * mean, 0.0))
    scan = texture > _TEXTURE_STD
    if chroma is not None:
        scan &= chroma <= _OVERLAY_CHROMA
    scan = scan.any(axis=0)
    small, large = scan.shape
    kernel = max(3, int(round(min(small, large) / 40)) | 1)
    opened = square_opening(scan, kernel)
    labelled, count = ndimage.label(opened)
    if count == 0:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    largest = labelled == (int(np.argmax(sizes)) + 1)
    # Holes lie inside the region's bounding box, so filling them changes only its area: they are
    # filled (a fifth of the search's time) only when the region is too small without them.
    smallest = _MIN_AREA * small * large
    if sizes.max() < smallest and ndimage.binary_fill_holes(largest).sum() < smallest:
        return None
    rows = np.flatnonzero(largest.any(axis=1))
    columns = np.flatnonzero(largest.any(axis=0))
    # The texture window reaches half its width past the scan's edge (not past the frame's): take that
    # back, less one pixel of slack. A side whose cut-off strip is not mostly black is dark scan
    # (deep tissue, shadowing), not border: nothing is cut there.
    shrink = _TEXTURE_WINDOW // 2 - 1
    top = rows[0] + shrink if rows[0] > 0 else 0
    bottom = rows[-1] + 1 - shrink if rows[-1] < small - 1 else small
    left = columns[0] + shrink if columns[0] > 0 else 0
    right = columns[-1] + 1 - shrink if columns[-1] < large - 1 else large
    top = top if _is_border(grey[:, :top]) else 0
    bottom = bottom if _is_border(grey[:, bottom:]) else small
    left = left if _is_border(grey[:, top:bottom, :left]) else 0
    right = right if _is_border(grey[:, top:bottom, right:]) else large
    y0, y1 = top * step, min(height, bottom * step)
    x0, x1 = left * step, min(width, right * step)
    if (x1 - x0) >= _WHOLE_FRAME * width and (y1 - y0) >= _WHOLE_FRAME * height:
        return None
    if min(x1 - x0, y1 - y0) < MIN_IMAGE_SIDE:  # too small to be the network's input: not the scan
        return None
    return ImagingRegion((int(x0), int(y0), int(x1 - x0), int(y1 - y0)), (width, height), "detected")


def find_imaging_region(stack: FrameStack, mode: str = "auto") -> ImagingRegion | None:
    """The imaging region of an input, or None for the whole frame.

    Args:
        stack: the input's frames.
        mode: ``"auto"`` (the DICOM calibrated region, else detected), ``"dicom"`` (the DICOM region
            only) or ``"none"`` (the whole frame).
    """
    if mode not in IMAGING_REGION_CHOICES:
        raise MFFMTError("imaging_region", f"must be one of {IMAGING_REGION_CHOICES}, got {mode!r}")
    if mode == "none":
        return None
    if stack.region is not None or mode == "dicom":
        return stack.region
    return detect_imaging_region(stack.pixels, stack.components)
