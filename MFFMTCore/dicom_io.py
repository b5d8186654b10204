"""Ultrasound DICOM files as scanners and PACS send them, read with pydicom.

SimpleITK reads a DICOM file's pixels but not the Sequence of Ultrasound Regions (0018,6011), where
an ultrasound scanner records which rectangle of the screen capture is the image and how large its
pixels are; it also drops palette colour and some compressed colour encodings. This module reads:

- single- and multi-frame files; MONOCHROME1/2, RGB, YBR_* (returned as RGB) and PALETTE COLOR
  (returned as RGB); uncompressed, RLE, JPEG (baseline, extended, lossless) and JPEG 2000, with the
  decoders pydicom finds (pylibjpeg-libjpeg, pylibjpeg-openjpeg, Pillow; RLE is built in);
- the calibration: the largest 2D tissue region (RegionSpatialFormat 1 = 2D, RegionDataType 1 = tissue)
  whose physical units are cm in both directions and that is at least 32 pixels on a side gives the
  pixel spacing (converted to mm) and the imaging region (the rectangle the network should see). Regions of other kinds (M-mode, spectral Doppler,
  waveforms) or other units are ignored. Without such a region, PixelSpacing (or ImagerPixelSpacing)
  gives the spacing when present; otherwise the spacing is unknown and areas stay in pixels.

A region that reaches past the frame's edge on one axis only (a capture cropped after acquisition)
is cut to the frame and used; one that reaches past both the right and the bottom edge by more
than a pixel comes from a larger frame (the capture was resized), so its deltas do not describe
these pixels: the calibration is then ignored, and the reason is kept in :attr:`DicomImage.notes`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

try:  # pydicom 3
    from pydicom.pixels import apply_color_lut, convert_color_space

    _DECODES_TO_RGB = True
except ImportError:  # pydicom 2.4, as Slicer 5.10 bundles it: same functions, older home
    from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

    _DECODES_TO_RGB = False

from MFFMTCore.base.calibration import spacing_problem
from MFFMTCore.errors import one_line
from MFFMTCore.files import MIN_IMAGE_SIDE, ImageReadError

# Codes of the Sequence of Ultrasound Regions (DICOM PS3.3 C.8.5.5.1).
SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1
UNITS_CM = 3
# How far (pixels) a region may reach past the frame and still be taken as drawn on this frame:
# scanners write the exclusive end column/row (800 for an 800-column frame) as often as the inclusive one.
_EDGE_TOLERANCE = 1


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions.

    Args:
        x0, y0, x1, y1: RegionLocationMinX0/MinY0/MaxX1/MaxY1 (pixel columns and rows, inclusive).
        spatial_format: RegionSpatialFormat (1 = 2D, 2 = M-mode, 3 = spectral, 4 = waveform, ...).
        data_type: RegionDataType (1 = tissue, 2 = colour flow, 3 = PW Doppler, ...).
        units_x, units_y: PhysicalUnitsX/YDirection (3 = cm, 4 = seconds, ...).
        delta_x, delta_y: PhysicalDeltaX/Y: physical size of one pixel in those units.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    data_type: int
    units_x: int
    units_y: int
    delta_x: float
    delta_y: float

    @classmethod
    def from_item(cls, item: Dataset) -> UltrasoundRegion:
        """Read one item of the sequence.

        Raises:
            ValueError: a location is missing, or a value is not a number (says which).
        """
        def number(keyword: str, kind: type, default=None):
            try:
                value = item.get(keyword, default)
                if value is None or value == "":
                    raise ValueError(f"has no {keyword}")
                return kind(value)
            except (TypeError, ValueError, OverflowError) as error:  # pydicom parses the value on access
                raise ValueError(str(error) if str(error).startswith("has no") else
                                 f"has a {keyword} that is not a number") from error

        return cls(
            x0=number("RegionLocationMinX0", int), y0=number("RegionLocationMinY0", int),
            x1=number("RegionLocationMaxX1", int), y1=number("RegionLocationMaxY1", int),
            spatial_format=number("RegionSpatialFormat", int, 0), data_type=number("RegionDataType", int, 0),
            units_x=number("PhysicalUnitsXDirection", int, 0), units_y=number("PhysicalUnitsYDirection", int, 0),
            delta_x=number("PhysicalDeltaX", float, 0.0), delta_y=number("PhysicalDeltaY", float, 0.0),
        )

    @property
    def is_calibrated_tissue(self) -> bool:
        """A 2D tissue image calibrated in cm along both axes (whether its deltas are plausible is
        :func:`MFFMTCore.base.calibration.spacing_problem`'s question)."""
        return (
            self.spatial_format == SPATIAL_FORMAT_2D and self.data_type == DATA_TYPE_TISSUE
            and self.units_x == UNITS_CM and self.units_y == UNITS_CM
        )

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(column, row) pixel spacing in mm (the deltas' sign only says which way is positive)."""
        return abs(self.delta_x) * 10.0, abs(self.delta_y) * 10.0

    def to_json(self) -> dict:
        return {
            "location": [self.x0, self.y0, self.x1, self.y1], "spatial_format": self.spatial_format,
            "data_type": self.data_type, "units": [self.units_x, self.units_y],
            "delta": [self.delta_x, self.delta_y],
        }


@dataclass
class DicomImage:
    """Pixels and calibration of one DICOM file.

    Args:
        pixels: (N, H, W) grey or (N, H, W, 3) RGB frames (N = 1 for a single-frame file).
        spacing: (column, row) pixel spacing in mm, or None when the file has no usable calibration.
        region: (x, y, w, h) pixel box of the calibrated tissue region inside the frame, or None.
        regions: every item of the file's Sequence of Ultrasound Regions.
        multiframe: whether the file is a multi-frame image (a clip), even of one frame.
        header: the file's data set without its pixel data (UIDs and patient/study attributes for
            DICOM results that reference it).
        notes: why a calibration present in the file was not used, or was cut to the frame.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None
    region: tuple[int, int, int, int] | None
    regions: list[UltrasoundRegion]
    multiframe: bool
    header: Dataset
    notes: list[str] = field(default_factory=list)

    @property
    def components(self) -> int:
        return 1 if self.pixels.ndim == 3 else int(self.pixels.shape[-1])


def calibrated_region(
    regions: list[UltrasoundRegion], frame_shape: tuple[int, int]
) -> tuple[UltrasoundRegion | None, tuple[int, int, int, int] | None, list[str]]:
    """The calibrated 2D tissue region of a frame, its pixel box (x, y, w, h) cut to the frame, and notes.

    Of the calibrated tissue regions that lie in the frame and are at least
    :data:`MFFMTCore.files.MIN_IMAGE_SIDE` pixels on a side (smaller ones cannot be the network's
    input), the largest is taken: the scan, where a capture also holds small calibrated insets
    (a probe map, a zoom box); of equal ones, the first (the one scanners list first, the active
    image of a dual view). See the module docstring for regions reaching past the frame. Each reason
    a region was passed over gives one note (its first region and how many more).

    Args:
        regions: the file's ultrasound regions.
        frame_shape: (rows, columns) of a frame.
    """
    height, width = frame_shape
    passed_over: dict[str, list[list[int]]] = {}
    candidates = []
    for region in regions:
        if not region.is_calibrated_tissue:
            continue
        location = region.to_json()["location"]
        problem = spacing_problem(region.spacing_mm)
        if problem is not None:
            passed_over.setdefault(problem, []).append(location)
            continue
        if not (0 <= region.x0 < width and 0 <= region.y0 < height) or region.x1 < region.x0 or region.y1 < region.y0:
            passed_over.setdefault(f"does not lie in the {width}x{height} frame", []).append(location)
            continue
        past_right = region.x1 > width - 1 + _EDGE_TOLERANCE
        past_bottom = region.y1 > height - 1 + _EDGE_TOLERANCE
        if past_right and past_bottom:
            passed_over.setdefault(f"reaches past the {width}x{height} frame on both axes (the capture was "
                                   "resized after calibration)", []).append(location)
            continue
        box = (region.x0, region.y0, min(region.x1, width - 1) - region.x0 + 1,
               min(region.y1, height - 1) - region.y0 + 1)
        if min(box[2:]) < MIN_IMAGE_SIDE:
            passed_over.setdefault(f"is smaller than the {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels MFFMT can "
                                   "classify", []).append(location)
            continue
        candidates.append((region, box, past_right or past_bottom))
    outcome = "not used" if candidates else "calibration ignored"
    notes = [f"ultrasound region {locations[0]}"
             + (f" (and {len(locations) - 1} more)" if len(locations) > 1 else "")
             + f" {reason}: {outcome}" for reason, locations in passed_over.items()]
    if not candidates:
        return None, None, notes
    region, box, cut = max(candidates, key=lambda candidate: candidate[1][2] * candidate[1][3])
    if cut:
        notes.append(f"ultrasound region {region.to_json()['location']} cut to the {width}x{height} frame")
    return region, box, notes


def _rgb_pixels(dataset: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Pixels as grey or RGB, whatever the photometric interpretation.

    pydicom 3 returns YBR_FULL and YBR_FULL_422 data as RGB; pydicom 2 (which Slicer 5.10 bundles)
    returns them as stored, so they are converted here. Palette colour and MONOCHROME1 are handled
    here for both.
    """
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not _DECODES_TO_RGB and photometric in ("YBR_FULL", "YBR_FULL_422") and pixels.shape[-1:] == (3,):
        pixels = convert_color_space(pixels, photometric, "RGB")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        # Palette entries are 8- or 16-bit (PS3.3 C.7.6.3.1.5); bring 16-bit ones to 8 bits.
        return (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 and rgb.max() > 255 else rgb.astype(np.uint8)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bright is tissue, as everywhere else
        return pixels.max() - pixels if pixels.size else pixels
    return pixels


def _ultrasound_regions(dataset: Dataset) -> tuple[list[UltrasoundRegion], list[str]]:
    """The items of the Sequence of Ultrasound Regions that can be read, and a note per one that cannot."""
    regions, notes = [], []
    for number, item in enumerate(dataset.get("SequenceOfUltrasoundRegions", []), start=1):
        try:
            regions.append(UltrasoundRegion.from_item(item))
        except ValueError as error:
            notes.append(f"ultrasound region {number} {error}: calibration ignored")
    return regions, notes


def pixel_spacing(dataset: Dataset, notes: list[str]) -> tuple[float, float] | None:
    """(column, row) spacing in mm from PixelSpacing, else ImagerPixelSpacing; a value that is not two
    plausible numbers (:func:`MFFMTCore.base.calibration.spacing_problem`) is ignored with a note."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in dataset:
            continue
        try:
            value = dataset[keyword].value
            values = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
        except (TypeError, ValueError, OverflowError):  # pydicom parses the value on access
            notes.append(f"{keyword} is not a list of numbers: calibration ignored")
            continue
        spacing = (values[1], values[0]) if len(values) == 2 else values  # DICOM gives (row, column)
        problem = spacing_problem(spacing)
        if problem is None:
            return spacing
        notes.append(f"{keyword} {problem}: calibration ignored")
    return None


def _truncation(dataset: Dataset, messages: list[str], size: int) -> str | None:
    """Where a file read with ``force=True`` ends too early, or None. pydicom reads a cut file without
    an error: it keeps an element shorter than its length, drops a last element header of under 8
    bytes, and drops the whole data set (with a warning) when the file ends inside an element of
    undefined length (encapsulated pixel data, a sequence).

    Args:
        dataset: what pydicom read.
        messages: the warnings it gave.
        size: the file's size in bytes.
    """
    if any("End of file" in message for message in messages):
        return "it ends inside an element of undefined length (compressed pixel data or a sequence)"
    last_end, last_defined = (132 if getattr(dataset, "preamble", None) is not None else 0), True
    for group in (dataset.get("file_meta", Dataset()), dataset):
        for tag in list(group.keys()):
            element = group._dict[tag]
            value, length = getattr(element, "value", None), getattr(element, "length", 0)
            start = getattr(element, "value_tell", None)
            # A value read is shorter than its length; a value left in the file (deferred) ends past it.
            held = len(value) if isinstance(value, bytes) else size - start if value is None and start else None
            if held is not None and length != 0xFFFFFFFF and held < length:
                return f"it ends inside {keyword_for_tag(tag) or tag} ({held} of its {length} bytes)"
            if start is not None and start >= last_end:
                last_end, last_defined = start + (0 if length == 0xFFFFFFFF else length), length != 0xFFFFFFFF
    # An element header is 8 or 12 bytes: fewer left over after the last element is a cut header
    # (more is an element pydicom parsed into a value without its position, e.g. a sequence).
    if last_defined and 0 < size - last_end < 12:
        return f"it ends inside the header of an element ({size - last_end} bytes after the last whole one)"
    sop_class = dataset.get("SOPClassUID") or dataset.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if "PixelData" not in dataset and sop_class is not None and str(getattr(sop_class, "name", "")).endswith(
            "Image Storage"):
        return f"its {sop_class.name} data set ends before its Pixel Data"
    return None


def read_dicom_header(path: str | os.PathLike, defer_size: int | None = 65536) -> Dataset:
    """The data set of a DICOM image file, checked as :func:`read_dicom` checks it, without decoding
    its pixels (values over ``defer_size`` bytes are left in the file; None reads them all).

    Raises:
        ImageReadError: the file is missing, not DICOM, truncated or holds no image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(str(path), force=True, defer_size=defer_size)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise ImageReadError(path, f"cannot be read as DICOM ({error})") from error
    truncation = _truncation(dataset, [str(warning.message) for warning in caught], path.stat().st_size)
    if truncation is not None:
        raise ImageReadError(path, f"DICOM file is truncated ({path.stat().st_size} bytes): {truncation}")
    if "PixelData" not in dataset or "Rows" not in dataset:
        raise ImageReadError(path, "DICOM file holds no image (no Pixel Data)")
    return dataset


def read_dicom(path: str | os.PathLike) -> DicomImage:
    """Read a DICOM image file with its ultrasound calibration.

    Args:
        path: a DICOM file (Part 10, or a bare data set).

    Raises:
        ImageReadError: the file is missing, not DICOM, truncated, holds no image, or its pixels cannot be
            decoded (the message says which decoder package is missing).
    """
    path = Path(path)
    dataset = read_dicom_header(path, defer_size=None)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises RuntimeError, NotImplementedError, ValueError, ...
        transfer = getattr(dataset.file_meta, "TransferSyntaxUID", None) if hasattr(dataset, "file_meta") else None
        name = transfer.name if transfer is not None else "unknown transfer syntax"
        detail = one_line(error)[:200]
        raise ImageReadError(path, f"DICOM pixel data ({name}) cannot be decoded ({detail})") from error
    if not hasattr(dataset, "file_meta") or "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta = dataset.get("file_meta", pydicom.dataset.FileMetaDataset())
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    pixels = _rgb_pixels(dataset, np.asarray(pixels))
    samples = int(dataset.get("SamplesPerPixel", 1))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    multiframe = "NumberOfFrames" in dataset
    # pydicom drops the frame axis of a one-frame file and keeps it otherwise.
    scalar_rank = 2 if samples == 1 and dataset.PhotometricInterpretation != "PALETTE COLOR" else 3
    if pixels.ndim == scalar_rank:
        pixels = pixels[np.newaxis]
    if pixels.shape[0] != frames:
        raise ImageReadError(path, f"DICOM file declares {frames} frames but holds {pixels.shape[0]}")
    if not np.issubdtype(pixels.dtype, np.integer) and not np.isfinite(pixels).all():
        raise ImageReadError(path, "DICOM pixels are not finite")

    regions, notes = _ultrasound_regions(dataset)
    chosen, box, region_notes = calibrated_region(regions, pixels.shape[1:3])
    notes += region_notes
    spacing = chosen.spacing_mm if chosen is not None else None
    if spacing is None:
        spacing = pixel_spacing(dataset, notes)
    del dataset.PixelData
    return DicomImage(pixels, spacing, box, regions, multiframe, dataset, notes)
