"""NRRD files written frame by frame, so that a clip's maps go to disk as its frames leave the network.

A gzip NRRD file is a text header followed by one gzip stream of the voxels, x fastest: the frames
of an (N, H, W) array one after the other. :class:`NrrdStream` writes the header, then compresses
each chunk of frames as it comes into a temporary file beside its destination
(:func:`MFFMTCore.files.temporary_beside`), and :meth:`NrrdStream.commit` moves the finished file into
place: memory does not grow with the clip's length, and no reader sees a half-written file. A
stream dropped before its commit (a cancel, an error) deletes its temporary file when it is
garbage-collected or the process exits; after a kill, the next run's
:func:`MFFMTCore.files.remove_temporaries` does.

The headers are written by pynrrd (:func:`map_header`, for probability and Grad-CAM maps) and by
slicerio (the segmentation, :mod:`MFFMTCore.inference.segmentation_file`): :func:`header_bytes`
lets them write their header for a stand-in array that holds no data and keeps the bytes they
write before the voxels. So the files are those the two libraries write, whatever their length.
"""

from __future__ import annotations

import io
import os
import shutil
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import nrrd
import numpy as np
from zlib_ng import zlib_ng

from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.files import atomic_path, move_into_place, temporary_beside

# gzip level 1 of zlib-ng, as SimpleITK wrote the maps: 2.7x faster than Python's zlib at level 1
# (files about 15% larger).
COMPRESSION_LEVEL = 1
_GZIP = zlib_ng.MAX_WBITS | 16  # a gzip stream, as NRRD's "encoding: gzip" holds
_READ_BYTES = 1 << 20
_DECOMPRESSED_BYTES = 1 << 24  # what one decompression step may give (a compressed run of zeros expands 1000x)


class _HeaderWritten(Exception):
    """Raised by the stand-in array when the writer asks for its voxels: the header is complete."""


class _HeaderOnly(np.ndarray):
    """An array of the right shape and type holding no data (zero strides); asked for its bytes, it
    stops the writer (pynrrd asks for them after writing the header, before writing any voxel)."""

    def tobytes(self, order="C"):  # numpy's signature
        raise _HeaderWritten


def header_bytes(write: Callable[[BinaryIO, np.ndarray], object], shape: Sequence[int], dtype) -> bytes:
    """The header an NRRD writer writes ahead of an array of ``shape`` and ``dtype``.

    Args:
        write: ``write(file, array)`` writes ``array`` as NRRD into the open binary ``file`` (e.g.
            ``nrrd.write`` or ``slicerio.write_segmentation`` with their fields bound).
        shape, dtype: the array's, in the order ``write`` expects.

    Raises:
        RuntimeError: the writer wrote voxels without asking the array for its bytes (a pynrrd
            version that writes differently): its header cannot be taken apart from its data.
    """
    buffer = io.BytesIO()
    stand_in = np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape)).view(_HeaderOnly)
    try:
        write(buffer, stand_in)
    except _HeaderWritten:
        header = buffer.getvalue()
        if header.endswith(b"\n\n"):  # NRRD's blank line between header and data
            return header
    raise RuntimeError("the NRRD writer did not stop after its header; the header cannot be streamed")


def map_header(geometry: ImageGeometry, shape: Sequence[int], dtype=np.float32) -> bytes:
    """The NRRD header of a map with ``shape`` (N, H, W) in ``geometry``, as SimpleITK would read and
    write it: 2D geometry (N = 1) gives a 2D image, else a 3D one in LPS space; gzip encoding."""
    count, height, width = shape
    dimension = geometry.dimension
    fields = {
        "space directions": (geometry.direction_matrix @ np.diag(geometry.spacing)).T,  # row i: axis i
        "kinds": ["domain"] * dimension,
        "encoding": "gzip",
        "space origin": np.asarray(geometry.origin, dtype=float),
    }
    if dimension == 3:
        fields["space"] = "left-posterior-superior"
    else:
        fields["space dimension"] = 2
    array_shape = (count, height, width) if dimension == 3 else (height, width)
    return header_bytes(lambda file, array: nrrd.write(file, array, dict(fields), index_order="C"), array_shape, dtype)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class NrrdStream:
    """A gzip NRRD file of an (N, H, W) array, written a few frames at a time.

    Args:
        destination: where :meth:`commit` puts the finished file.
        header: its NRRD header (:func:`map_header`, :func:`header_bytes`), for voxels in the order
            of the (N, H, W) array.
        shape: (N, H, W) of the whole array.
        dtype: its type.
    """

    def __init__(self, destination: str | os.PathLike, header: bytes, shape: Sequence[int], dtype):
        self.destination = Path(destination)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.header_length = len(header)
        self.frames_written = 0
        self.committed = False
        self._temporary = temporary_beside(self.destination)
        # Deletes the temporary file when this stream is dropped uncommitted, or at exit.
        self._finalizer = weakref.finalize(self, _unlink, self._temporary)
        self._file: BinaryIO | None = open(self._temporary, "wb")
        self._file.write(header)
        self._compressor = zlib_ng.compressobj(COMPRESSION_LEVEL, zlib_ng.DEFLATED, _GZIP)

    @property
    def path(self) -> Path:
        """Where the file is now: its temporary file until :meth:`commit`, then its destination."""
        return self.destination if self.committed else self._temporary

    def write(self, frames: np.ndarray) -> None:
        """Append the next frames ((n, H, W), in order)."""
        if self._file is None:
            raise ValueError(f"{self.destination}: the stream is closed")
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        if frames.shape[1:] != self.shape[1:] or self.frames_written + len(frames) > self.shape[0]:
            raise ValueError(f"{self.destination}: frames of shape {frames.shape} after {self.frames_written} "
                             f"do not fit an array of shape {self.shape}")
        self._file.write(self._compressor.compress(frames))  # the buffer itself: no copy of the frames
        self.frames_written += len(frames)

    def close(self) -> None:
        """End the gzip stream once every frame is written (nothing to do after the first call).

        Raises:
            ValueError: frames are missing.
        """
        if self._file is None:
            return
        if self.frames_written != self.shape[0]:
            raise ValueError(f"{self.destination}: {self.frames_written} of {self.shape[0]} frames written")
        self._file.write(self._compressor.flush())
        self._file.close()
        self._file = None

    def commit(self) -> Path:
        """Close the file and move it into place (atomically). Returns the destination."""
        if not self.committed:
            self.close()
            move_into_place(self._temporary, self.destination)
            self.committed = True
            self._finalizer.detach()
        return self.destination

    def save(self, path: str | os.PathLike) -> Path:
        """Put the finished file at ``path``: its destination is committed, another path gets a copy
        (written atomically). Returns ``path``."""
        path = Path(path)
        if path == self.destination:
            return self.commit()
        self.close()
        with atomic_path(path) as temporary:
            shutil.copyfile(self.path, temporary)
        return path

    def discard(self) -> None:
        """Drop an uncommitted file (its temporary file is deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._finalizer()

    def read(self) -> np.ndarray:
        """The whole array, read back from the file (decompressed straight into one new array)."""
        self.close()
        array = np.empty(self.shape, dtype=self.dtype)
        target = memoryview(array.reshape(-1)).cast("B")
        decompressor = zlib_ng.decompressobj(_GZIP)
        done = 0
        with open(self.path, "rb") as file:
            file.seek(self.header_length)
            while not decompressor.eof:
                chunk = decompressor.unconsumed_tail or file.read(_READ_BYTES)
                if not chunk:
                    break
                data = decompressor.decompress(chunk, _DECOMPRESSED_BYTES)
                target[done : done + len(data)] = data
                done += len(data)
        if done != array.nbytes:
            raise ValueError(f"{self.path}: holds {done} of the {array.nbytes} bytes of its map")
        return array


def write_frames(path: str | os.PathLike, header: bytes, shape: Sequence[int], dtype,
                 chunks: Iterable[np.ndarray]) -> Path:
    """Write ``chunks`` of frames (in order, (n, H, W) each) after ``header`` as a gzip NRRD file of an
    array of ``shape``, atomically: a failure on the way leaves no file. Returns the path."""
    stream = NrrdStream(path, header, shape, dtype)
    try:
        for chunk in chunks:
            stream.write(chunk)
        return stream.commit()
    finally:
        if not stream.committed:
            stream.discard()


def write_map(path: str | os.PathLike, array: np.ndarray, geometry: ImageGeometry, frames_per_chunk: int = 16) -> Path:
    """Write an (N, H, W) map (N = 1 for a 2D ``geometry``) as a gzip NRRD file, atomically, a few
    frames at a time (no whole copy of the map). Returns the path."""
    chunks = (array[start : start + frames_per_chunk] for start in range(0, len(array), frames_per_chunk))
    return write_frames(path, map_header(geometry, array.shape, array.dtype), array.shape, array.dtype, chunks)
