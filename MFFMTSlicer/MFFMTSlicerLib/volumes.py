"""Voxel arrays from the scene to files, and frames of a sequence to one clip volume.

Slicer hands out voxels as numpy arrays indexed (k, j, i) or (k, j, i, component) together with an
IJK-to-RAS matrix. These functions write such arrays as NRRD files that MFFMTCore reads back with
the same geometry, without going through Slicer's storage nodes, so the geometry handling is tested
outside Slicer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from MFFMTCore.base.geometry import ImageGeometry


def write_volume(array: np.ndarray, ijk_to_ras: np.ndarray, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write a voxel array with its Slicer geometry to an image file (NRRD, NIfTI, ...), atomically.

    Args:
        array: (k, j, i) scalar voxels or (k, j, i, c) vector voxels (RGB frames), as
            ``slicer.util.arrayFromVolume`` returns them.
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix.
        path: destination; the suffix chooses the format.
        compress: gzip the voxels (smaller files, slower to write).

    Returns:
        The path written.
    """
    import SimpleITK as sitk

    from MFFMTCore.files import atomic_path

    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: voxel array must be (k, j, i) or (k, j, i, c), got shape {array.shape}")
    image = ImageGeometry.from_ijk_to_ras(ijk_to_ras).apply(
        sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 4))
    path = Path(path)
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), compress)
    return path


def stack_frames(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the frames of a sequence into one clip array (n, j, i) that MFFMTCore reads as n frames.

    Args:
        frames: one array per frame, (1, j, i) grey or (1, j, i, c) colour, as
            ``slicer.util.arrayFromVolume`` returns them for 2D frames. Colour frames become grey
            with the same luminance weights MFFMTCore uses for colour images.

    Raises:
        ValueError: no frames, a frame with several slices, or frames of different sizes.
    """
    from MFFMTCore.files import grey_from_pixels

    if not frames:
        raise ValueError("the sequence has no frames")
    grey = []
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim not in (3, 4) or frame.shape[0] != 1:
            raise ValueError(f"frame {index} has shape {frame.shape}: only sequences of 2D frames can be segmented")
        pixels = frame[0] if frame.ndim == 3 else grey_from_pixels(frame[0], frame.shape[-1])
        if grey and pixels.shape != grey[0].shape:
            raise ValueError(f"frame {index} is {pixels.shape[1]}x{pixels.shape[0]} pixels but frame 0 is "
                             f"{grey[0].shape[1]}x{grey[0].shape[0]}: all frames must have the same size")
        grey.append(pixels)
    dtype = np.result_type(*grey)
    return np.stack([pixels.astype(dtype, copy=False) for pixels in grey])
