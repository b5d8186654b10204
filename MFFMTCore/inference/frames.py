"""What the predictor accepts as an image, turned into one form: a stack of 2D frames with a geometry.

A 2D picture is a stack of one frame; a 3D volume (a clip loaded in Slicer, a multi-frame DICOM) is a
stack of N frames along its last ITK axis (k). Pixels stay in their original type and are converted
to grey float32 a few frames at a time, so a long clip never exists as float32 in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from MFFMTCore.base.geometry import ImageGeometry, records_spacing
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import check_pixel_budget, grey_from_pixels, is_dicom_file, read_image
from MFFMTCore.inference.imaging_region import ImagingRegion

if TYPE_CHECKING:  # pydicom (0.15 s to import) only for DICOM inputs
    from MFFMTCore.dicom_io import DicomImage

ImageInput = str | os.PathLike | sitk.Image | np.ndarray


@dataclass
class FrameStack:
    """Frames of one input and their geometry.

    Args:
        pixels: (N, H, W) scalar or (N, H, W, C) vector pixels, in the input's type (often a view).
        components: pixel components C (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).
        geometry: the input's geometry, 2D for a single frame and 3D for a stack.
        source: the file name, or a description of an in-memory input, for messages.
        keep_alive: the SimpleITK image ``pixels`` is a view of (it must outlive the view).
        region: the calibrated imaging region of an ultrasound DICOM file, or None.
        dicom: the DICOM file's pixels and header, for results that reference it; None for other inputs.
    """

    pixels: np.ndarray
    components: int
    geometry: ImageGeometry
    source: str
    keep_alive: sitk.Image | None = None
    region: ImagingRegion | None = None
    dicom: DicomImage | None = None

    @property
    def is_2d(self) -> bool:
        return self.geometry.dimension == 2

    @property
    def num_frames(self) -> int:
        return self.pixels.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return tuple(self.pixels.shape[1:3])

    def grey(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` as float32 grey, shape (n, H, W)."""
        return grey_from_pixels(self.pixels[start:stop], self.components)


def _geometry_override(
    base: ImageGeometry,
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
    direction: Sequence[float] | None,
) -> ImageGeometry:
    if spacing is None and origin is None and direction is None:
        return base
    return ImageGeometry(
        spacing=tuple(float(v) for v in spacing) if spacing is not None else base.spacing,
        origin=tuple(float(v) for v in origin) if origin is not None else base.origin,
        direction=tuple(float(v) for v in direction) if direction is not None else base.direction,
        spacing_known=base.spacing_known or spacing is not None,
    )


def _array_layout(array: np.ndarray) -> tuple[int, int]:
    """(dimension, components) of a NumPy image, by the rules documented in :func:`as_frame_stack`."""
    if array.ndim == 2:
        return 2, 1
    if array.ndim == 3:
        return (2, array.shape[2]) if array.shape[2] in (3, 4) else (3, 1)
    if array.ndim == 4 and array.shape[3] in (3, 4):
        return 3, array.shape[3]
    raise ValueError(
        f"array of shape {array.shape} is not an image: expected (H, W), (H, W, 3|4), (N, H, W) or (N, H, W, 3|4)"
    )


def as_frame_stack(
    image: ImageInput,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
) -> FrameStack:
    """Turn a file, a SimpleITK image or a NumPy array into a :class:`FrameStack`.

    NumPy arrays are read as: (H, W) one grey frame; (H, W, 3) or (H, W, 4) one RGB(A) frame;
    any other (N, H, W) a stack of N grey frames; (N, H, W, 3|4) a stack of RGB(A) frames. So an
    (H, W, 3) array is always one colour frame, never three frames 3 pixels wide (pass such a
    stack as a SimpleITK image). Geometry values follow SimpleITK: ITK order (column, row[, frame]),
    direction row-major; without them an array has unit spacing, zero origin, identity direction.

    Args:
        image: file (PNG, JPEG, BMP, TIFF, NRRD, NIfTI, MHA, DICOM file or series folder),
            SimpleITK image, or NumPy array.
        spacing, origin, direction: geometry that replaces the input's own (e.g. a known pixel
            spacing for a PNG). Passing ``spacing`` marks the spacing as known.

    Raises:
        ImageReadError: a file cannot be read.
        ValueError: the input is not a 2D frame or a 3D stack of frames, or the geometry is invalid.
    """
    if isinstance(image, np.ndarray):
        dimension, components = _array_layout(image)
        shape = image.shape[:3] if dimension == 3 else image.shape[:2]
        check_pixel_budget(f"array{tuple(image.shape)}", shape[::-1], components, image.itemsize, from_file=False)
        base = ImageGeometry((1.0,) * dimension, (0.0,) * dimension, tuple(np.eye(dimension).ravel()), False)
        geometry = _geometry_override(base, spacing, origin, direction)
        frames = image if dimension == 3 else image[np.newaxis]
        return FrameStack(frames, components, geometry, f"array{tuple(image.shape)}")

    if not isinstance(image, sitk.Image) and _is_ultrasound_dicom(image):
        return _dicom_frame_stack(Path(image), spacing, origin, direction)
    if isinstance(image, sitk.Image):
        source = "SimpleITK image"
        # A unit spacing on an in-memory image is ITK's default for pictures, not a measurement.
        spacing_known = any(abs(value - 1.0) > 1e-9 for value in image.GetSpacing())
    else:
        source = str(image)
        path = Path(image)
        spacing_known = records_spacing(path)
        image = read_image(path)
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise MFFMTError(source, f"a {dimension}D image is neither a frame nor a stack of frames")
    geometry = _geometry_override(ImageGeometry.of(image, spacing_known), spacing, origin, direction)
    pixels = sitk.GetArrayViewFromImage(image)
    frames = pixels if dimension == 3 else pixels[np.newaxis]
    return FrameStack(frames, image.GetNumberOfComponentsPerPixel(), geometry, source, keep_alive=image)


def _is_ultrasound_dicom(path: str | os.PathLike) -> bool:
    """A DICOM file without patient-space geometry (a screen capture or cine loop, as ultrasound stores).

    Files with Image Orientation (Patient) (CT, MR, enhanced multi-frame) keep SimpleITK's reader,
    which places them in patient space.
    """
    if not is_dicom_file(path):
        return False
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # not readable as DICOM here: SimpleITK's reader reports the problem
        return False
    return "ImageOrientationPatient" not in header and "SharedFunctionalGroupsSequence" not in header


def _check_dicom_budget(path: Path) -> None:
    """The pixel budget, from the header's Rows, Columns, NumberOfFrames and sample size, before decoding."""
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        size = [int(header.Columns), int(header.Rows), int(header.get("NumberOfFrames") or 1)]
        components, bits = int(header.get("SamplesPerPixel") or 1), int(header.get("BitsAllocated") or 8)
        if str(header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
            components, bits = 3, 16  # decoded through 16-bit palette entries into RGB
    except Exception:  # a header without usable sizes: the reader says what is wrong with it
        return
    check_pixel_budget(path, size, components, max(bits // 8, 1), dicom=True)


def _dicom_frame_stack(
    path: Path, spacing: Sequence[float] | None, origin: Sequence[float] | None, direction: Sequence[float] | None
) -> FrameStack:
    """Frames of an ultrasound DICOM file with the calibration of its Sequence of Ultrasound Regions.

    A one-frame file is a 2D frame; a file of several frames is a clip (frames along k, unit frame step).
    """
    from MFFMTCore.dicom_io import read_dicom

    _check_dicom_budget(path)
    dicom = read_dicom(path)
    count, height, width = dicom.pixels.shape[:3]
    dimension = 2 if count == 1 else 3
    in_plane = dicom.spacing if dicom.spacing is not None else (1.0, 1.0)
    base = ImageGeometry(
        spacing=(*in_plane, 1.0)[:dimension], origin=(0.0,) * dimension,
        direction=tuple(np.eye(dimension).ravel()), spacing_known=dicom.spacing is not None,
    )
    region = ImagingRegion(dicom.region, (width, height), "dicom") if dicom.region is not None else None
    geometry = _geometry_override(base, spacing, origin, direction)
    return FrameStack(dicom.pixels, dicom.components, geometry, str(path), region=region, dicom=dicom)
