"""Synthetic ultrasound DICOM files for the tests: a speckled scan inside a black screen with text bars.

Test helper only (not a test module): ``ultrasound_dicom`` writes a file with any photometric
interpretation, transfer syntax, frame count and Sequence of Ultrasound Regions;
:class:`DarkLesionNet` is a network with a known answer on such captures (conftest's
``dark_lesion_predictor`` runs it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from MFFMTCore.network import MFFMTOutput

FRAME_SHAPE = (120, 160)
# The scan inside the capture: rows 20..99, columns 30..139 (inclusive), as a region gives it.
SCAN = (30, 20, 139, 99)


def capture(frames: int = 1, seed: int = 0, lesion: tuple[int, int, int, int] | None = (60, 40, 40, 20)) -> np.ndarray:
    """(frames, H, W) uint8 screen captures: a speckled scan with a dark lesion (x, y, w, h), text outside."""
    rng = np.random.default_rng(seed)
    pictures = np.zeros((frames, *FRAME_SHAPE), dtype=np.uint8)
    x0, y0, x1, y1 = SCAN
    for picture in pictures:
        picture[y0 : y1 + 1, x0 : x1 + 1] = rng.integers(60, 200, size=(y1 - y0 + 1, x1 - x0 + 1))
        if lesion is not None:
            x, y, w, h = lesion
            picture[y : y + h, x : x + w] = rng.integers(0, 25, size=(h, w))
        picture[4:8, 5:60:3] = 255  # "text" in the header: thin strokes
    return pictures


def region_item(box=SCAN, delta_cm=(0.02, 0.03), spatial_format=1, data_type=1, units=(3, 3)) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta_cm
    return item


def ultrasound_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    regions: list[Dataset] | None = None,
    multiframe: bool | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    palette: np.ndarray | None = None,
) -> Path:
    """Write an ultrasound DICOM file.

    Args:
        pixels: (N, H, W) or (N, H, W, 3) stored values (already in ``photometric``'s encoding).
        regions: items of the Sequence of Ultrasound Regions, or None for none.
        multiframe: write a multi-frame object (default: when there are several frames).
        transfer_syntax: a compressed one (RLE, JPEG 2000) is encoded with pydicom's encoders.
        palette: (256, 3) uint8 lookup table for PALETTE COLOR.
    """
    frames = pixels.shape[0]
    multiframe = frames > 1 if multiframe is None else multiframe
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if multiframe else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = (
        "20260101", "120000", "A1", "", "1")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "US", 1, 1, "Test"
    ds.Rows, ds.Columns = pixels.shape[1:3]
    colour = pixels.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if multiframe:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    if palette is not None:
        for index, name in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 8])
            setattr(ds, f"{name}PaletteColorLookupTableData", palette[:, index].astype(np.uint8).tobytes())
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = regions
    ds.PixelData = np.ascontiguousarray(pixels if multiframe else pixels[0]).tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


class DarkLesionNet(torch.nn.Module):
    """Stand-in network: lesion where the (normalised) input is dark; malignant, p = sigmoid(1) ~ 0.73."""

    def forward(self, x: torch.Tensor) -> MFFMTOutput:
        logits = torch.stack([torch.zeros(len(x)), torch.ones(len(x))], dim=1)
        return MFFMTOutput(logits, 40 * (0.2 - x), x[:, :, ::32, ::32], {})
