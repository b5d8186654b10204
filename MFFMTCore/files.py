"""Files on disk: reading ultrasound images (errors name the file and the problem), and writing
outputs atomically as strict JSON or text.

(Named ``files`` rather than ``io`` so that it never shadows the standard library's :mod:`io` in a
reader's mind where both are imported.)

Every reader in MFFMTCore (datasets, inference, the command line) goes through :func:`read_image`,
so PNG, JPEG, BMP, NRRD, NIfTI and DICOM (a file or a series folder) behave the same everywhere.
Images come back as SimpleITK images so that their geometry (spacing, origin, direction) travels
with them; 2D pictures have unit spacing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from MFFMTCore.base.pixel_budget import frame_pixel_budget, input_byte_budget, reading_copies
from MFFMTCore.errors import MFFMTError

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
    ".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm",
)
#: Smallest frame side (pixels) MFFMT answers for; smaller images and ROIs are refused. The
#: network downsamples 32 times, so a smaller region holds less than one pixel of its coarsest map.
MIN_IMAGE_SIDE = 32
_SAMPLE_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkFloat32: 4, sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1,
    sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2, sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4,
    sitk.sitkVectorFloat32: 4,
}  # any other pixel type counts 8 bytes a sample

# The temporary names atomic_path makes: "." + name less suffix + "." + mkstemp's 8 random characters +
# ".tmp" + suffix (the last one or two, so that writers still know the format: ".nii.gz", ".seg.nrrd").
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\..+)?$")
#: How many bytes longer a temporary name of atomic_path is than the name it stands for.
TEMPORARY_NAME_EXTRA = len(".") + len(".") + 8 + len(".tmp")
_KEPT_SUFFIX_CHARACTERS = 16


class ImageReadError(MFFMTError):
    """An input image cannot be used. The message names the file and says what is wrong."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has a suffix :func:`read_image` understands."""
    name = str(path).lower()
    return name.endswith(IMAGE_SUFFIXES)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128) or the .dcm suffix."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.name.lower().endswith(".dcm"):
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix, double suffixes such as ".nii.gz" counting as one.

    A name without a known image suffix loses its last suffix, as ``Path.stem`` does.
    """
    name = Path(path).name
    suffix = next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), "")
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else Path(name).stem


# Headers that may keep their pixels in other files (MetaImage's ElementDataFile, NRRD's "data file").
_HEADER_SUFFIXES = (".mhd", ".mha", ".nhdr", ".nrrd")
_HEADER_BYTES = 1 << 16  # a header longer than this is not one we read data file names from


def _header_lines(path: Path) -> list[str]:
    """The text lines of a MetaImage or NRRD header (NRRD: up to the blank line before its data)."""
    with open(path, "rb") as handle:
        text = handle.read(_HEADER_BYTES).decode("latin-1")
    lines = text.splitlines()
    if path.name.lower().endswith((".nhdr", ".nrrd")) and "" in lines:
        lines = lines[: lines.index("")]
    return lines


def _data_file_names(lines: list[str], nrrd: bool) -> list[str]:
    """File names a header's data-file field lists: one name, ``LIST`` (names on the next lines) or a
    printf pattern with first, last and step numbers."""
    key = re.compile(r"^\s*(data ?file)\s*:\s*(.*)$" if nrrd else r"^\s*ElementDataFile\s*=\s*(.*)$", re.IGNORECASE)
    for index, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        value = match.groups()[-1].strip()
        if value.upper() == "LOCAL" and not nrrd:
            return []
        if value.split()[:1] == ["LIST"]:
            return [name.strip() for name in lines[index + 1:] if name.strip()]
        parts = value.split()
        if "%" in value and len(parts) >= 4:
            try:
                first, last, step = (int(number) for number in parts[1:4])
                numbers = range(first, last + (1 if step > 0 else -1), step) if step else [first]
                return [parts[0] % number for number in numbers][:100000]
            except (ValueError, TypeError):
                return [value]
        return [value]
    return []


def image_files(path: str | os.PathLike) -> list[Path]:
    """Every file an image is read from: the file itself and, for a detached header (``.mhd``,
    ``.nhdr``...), the data files it names (relative names are relative to the header's folder).

    A DICOM folder gives every file in it. Used for content hashes, so that changing any file the
    pixels come from makes a rerun redo the input.
    """
    path = Path(path)
    if path.is_dir():
        return sorted(file for file in path.rglob("*") if file.is_file())
    if not path.name.lower().endswith(_HEADER_SUFFIXES) or not path.is_file():
        return [path]
    try:
        names = _data_file_names(_header_lines(path), nrrd=path.name.lower().endswith((".nhdr", ".nrrd")))
    except OSError:
        return [path]
    return [path, *(path.parent / name for name in names)]


def hash_file(digest: Any, path: str | os.PathLike) -> None:
    """Feed the bytes of ``path`` to ``digest`` (a :mod:`hashlib` object), a block at a time.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def check_data_files(path: str | os.PathLike) -> None:
    """Refuse a detached header whose data files lie outside the header's folder.

    A header could otherwise name any readable file (``/etc/passwd``, ``../../private.raw``) as its
    pixels. The names are judged as written (no symbolic link is followed), so a user who wants a
    data file kept elsewhere passes it explicitly by placing a link to it beside the header.

    Raises:
        ImageReadError: naming the header and the first data file outside its folder.
    """
    path = Path(path)
    folder = Path(os.path.normpath(path.absolute().parent))
    for data in image_files(path)[1:]:
        written = Path(os.path.normpath(data.absolute()))
        if not written.is_relative_to(folder):
            raise ImageReadError(path, f"names a data file outside its folder ({data}); such a header is "
                                       "refused: put the data file (or a link to it) beside the header")


def check_pixel_budget(source: str | os.PathLike, size: Sequence[int], components: int = 1,
                       sample_bytes: int = 1, from_file: bool = True, dicom: bool = False) -> None:
    """Refuse an input whose pixels would be over the budget once decoded (:mod:`MFFMTCore.base.pixel_budget`).

    Call it with the sizes a header gives, before decoding. Sizes are Python integers: a header
    claiming 2**62 rows neither overflows nor wraps.

    Args:
        size: sizes in ITK order: (width, height) of a frame, then the frame count(s).
        components: samples per pixel (3 for RGB).
        sample_bytes: bytes per sample.
        from_file: the pixels are still to be read from a file (a colour or DICOM file is held twice
            while read, :func:`MFFMTCore.base.pixel_budget.reading_copies`); False for pixels in memory.
        dicom: the file is read by pydicom.

    Raises:
        ImageReadError: naming the input, its size and the budget (and how to raise it).
    """
    size = [int(side) for side in size] + [1] * (2 - len(size))
    width, height, frames = size[0], size[1], math.prod(size[2:])
    frame_limit = frame_pixel_budget()
    if width * height > frame_limit:
        raise ImageReadError(source, f"frame of {width}x{height} pixels is over the budget of {frame_limit} pixels "
                                     "per frame; refused before decoding (raise MFFMT_MAX_FRAME_PIXELS to allow it)")
    components = max(int(components), 1)
    held = width * height * frames * components * max(int(sample_bytes), 1)
    held *= reading_copies(components, dicom) if from_file else 1
    input_limit = input_byte_budget()
    if held > input_limit:
        raise ImageReadError(source, f"{frames} frames of {width}x{height} pixels would take {held / 2**30:.1f} GiB "
                                     f"to decode, over the budget of {input_limit / 2**30:.1f} GiB per input; refused "
                                     "before decoding (raise MFFMT_MAX_INPUT_BYTES to allow it)")


def _read_checked(files: list[str], source: Path) -> sitk.Image:
    """Read a file (or a DICOM series: its files) after checking the size its header gives."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        if "Unknown PixelType" in str(error) and len(files) == 1:
            return _read_with_pil(source)  # ITK reads no grey + alpha PNG
        raise
    size = [*reader.GetSize()] + ([len(files)] if len(files) > 1 else [])
    check_pixel_budget(source, size, reader.GetNumberOfComponents(), _SAMPLE_BYTES.get(reader.GetPixelID(), 8))
    if len(files) > 1:
        return sitk.ReadImage(files)
    return reader.Execute()


def _read_with_pil(path: Path) -> sitk.Image:
    """A grey + alpha (or palette + alpha) picture, which ITK's PNG reader refuses, read with Pillow."""
    from PIL import Image

    with Image.open(path) as picture:
        if picture.mode not in ("LA", "La", "PA"):
            raise RuntimeError(f"ERROR: pixel mode {picture.mode} is not supported")
        width, height = picture.size
        check_pixel_budget(path, (width, height), 2 if picture.mode != "PA" else 4)
        pixels = np.asarray(picture.convert("RGBA" if picture.mode == "PA" else "LA"))
    return sitk.GetImageFromArray(pixels, isVector=True)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 2D picture, a volume (a stack of frames) or a DICOM file or series folder.

    Args:
        path: file or DICOM folder.

    Returns:
        The image as SimpleITK reads it: scalar or vector pixels (RGB, RGBA), with its geometry.

    Raises:
        ImageReadError: the file is missing, empty, not an image, over the pixel budget
            (:func:`check_pixel_budget`, checked before decoding) or cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "symbolic link loop or broken link" if path.is_symlink() else "file not found")
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not series:
                raise ImageReadError(path, "folder holds no DICOM series")
            return _read_checked(list(series), path)
        if path.stat().st_size == 0:
            raise ImageReadError(path, "file is empty")
        check_data_files(path)
        return _read_checked([str(path)], path)
    except ImageReadError:
        raise
    except OSError as error:  # Pillow's, for the pictures ITK cannot read
        raise ImageReadError(path, f"cannot be read as an image ({str(error)[:200]})") from error
    except RuntimeError as error:
        # ITK's messages are long C++ traces: keep the first line that says what went wrong.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line), lines[-1] if lines else "")
        raise ImageReadError(path, f"cannot be read as an image ({detail[:200]})") from error


def to_grey_array(image: sitk.Image) -> np.ndarray:
    """Pixel array of ``image`` as float32 grey values, shape (H, W) or (N, H, W).

    RGB(A) pixels are turned into luminance (ITU-R BT.601 weights); the alpha channel is ignored.
    """
    return grey_from_pixels(sitk.GetArrayViewFromImage(image), image.GetNumberOfComponentsPerPixel())


def grey_from_pixels(array: np.ndarray, components: int) -> np.ndarray:
    """Float32 grey values of a pixel array as SimpleITK lays it out (components on the last axis).

    The array form of :func:`to_grey_array`, so that a long clip can be converted a few frames at a
    time without a float32 copy of the whole clip.

    Args:
        array: (..., H, W) scalar pixels, or (..., H, W, components) vector pixels.
        components: number of components per pixel (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).
    """
    if components == 1:
        return array.astype(np.float32)
    if components == 2:  # grey + alpha
        return array[..., 0].astype(np.float32)
    return array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_frames(grey: np.ndarray, source: str, first_frame: int = 0) -> None:
    """Refuse grey frames that cannot give a trustworthy answer: any NaN or infinite pixel.

    Args:
        grey: (H, W) or (N, H, W) float grey values.
        source: the input's name, for the message.
        first_frame: index of ``grey``'s first frame in its input, for the message.

    Raises:
        ImageReadError: naming the input, the first bad frame and the number of bad pixels.
    """
    finite = np.isfinite(grey)
    if finite.all():
        return
    frames = finite.reshape(-1, *grey.shape[-2:]).all(axis=(1, 2))
    bad = int(np.argmin(frames)) + first_frame
    raise ImageReadError(source, f"frame {bad} holds {int(finite.size - finite.sum())} NaN or infinite pixel "
                                 "value(s); such an image cannot be classified")


def check_frame_size(shape: Sequence[int], source: str, what: str = "frame") -> None:
    """Refuse a frame or ROI smaller than :data:`MIN_IMAGE_SIDE` pixels on a side.

    Args:
        shape: (height, width) in pixels.
        source: the input's name, for the message.
        what: what is measured ("frame", "ROI"), for the message.

    Raises:
        ImageReadError: naming the input and the size.
    """
    height, width = (int(side) for side in shape)
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageReadError(source, f"{what} of {width}x{height} pixels is smaller than the "
                                     f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} minimum MFFMT can classify")


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` and return its grey pixel array (float32, (H, W) or (N, H, W))."""
    return to_grey_array(read_image(path))


def read_mask(paths: str | os.PathLike | list[str | os.PathLike]) -> np.ndarray:
    """Read one or several mask files of one image and combine them by logical OR.

    A pixel is lesion where it is brighter than half the file's maximum, so 1-bit, 0/1, 0/255, RGB
    and RGBA masks all work, and JPEG compression noise around a lesion is not taken for lesion.
    Adding uint8 arrays would wrap around at 256; OR cannot.

    Raises:
        ImageReadError: a mask cannot be read, or the masks differ in size.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    combined: np.ndarray | None = None
    for path in paths:
        grey = read_grey(path)
        mask = grey > grey.max() / 2 if grey.max() > 0 else grey > 0
        if combined is not None and mask.shape != combined.shape:
            raise ImageReadError(path, f"mask size {mask.shape} differs from {combined.shape} of {paths[0]}")
        combined = mask if combined is None else (combined | mask)
    if combined is None:
        raise ValueError("read_mask needs at least one path")
    return combined


def temporary_beside(destination: str | os.PathLike) -> Path:
    """A new empty temporary file beside ``destination``, named so that :func:`remove_temporaries`
    knows it (its suffix still says the format: ".nrrd", ".seg.nrrd").

    Used by :func:`atomic_path`, and by writers that fill a file over a longer time (a clip's map
    streamed frame by frame, :mod:`MFFMTCore.inference.nrrd_stream`) and then :func:`move_into_place`.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes[-2:])
    if len(suffix) > _KEPT_SUFFIX_CHARACTERS:  # "a.b_probability.nrrd": the last suffix says the format
        suffix = destination.suffix
    base = destination.name[: len(destination.name) - len(suffix)]
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=destination.parent)
    os.close(handle)
    return Path(temporary)


def move_into_place(temporary: Path, destination: str | os.PathLike) -> None:
    """Give a finished :func:`temporary_beside` file the permissions a plain open() would, and
    rename it to ``destination`` (atomically: a reader sees the old file or the new one)."""
    # mkstemp makes owner-only files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, destination)


@contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; move it into place only if the block succeeds.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    """
    temporary = temporary_beside(destination)
    try:
        yield temporary
        move_into_place(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``destination`` atomically (see :func:`atomic_path`)."""
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def json_text(value: Any, indent: int | None = 1) -> str:
    """Strict JSON of ``value``: NaN and infinity are refused (ValueError), never written as bare tokens."""
    return json.dumps(value, indent=indent, allow_nan=False)


def write_json_atomic(destination: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as strict JSON (see :func:`json_text`) to ``destination`` atomically."""
    write_text_atomic(destination, json_text(value) + "\n")


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_path` write left in ``directory``.

    Call it only on a folder this process owns (holding its :class:`~MFFMTCore.folder_lock.FolderLock`),
    so that no other writer's file in progress is removed. Returns the files removed.
    """
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for path in directory.iterdir():
            if _TEMPORARY_NAME.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def describe_write_error(path: str | os.PathLike, error: BaseException) -> str:
    """A short reason why writing ``path`` failed, for libraries that do not raise OSError (torch, safetensors).

    A full disk is named as such; otherwise the error's first line.
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        if shutil.disk_usage(Path(path).parent).free < 16 * 2**20:
            return "no space left on the device"
    except OSError:
        pass
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
