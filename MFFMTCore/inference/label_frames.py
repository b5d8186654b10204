"""A label map kept frame by frame and compressed: a clip's lesion masks without (N, H, W) bytes in memory.

A frame keeps the box that holds its lesion pixels, zlib-compressed; a lesion-free frame keeps
nothing. A 400-frame 1024x1024 clip's label map takes a few MB this way instead of 400 MB, and any
frame (the overlay's, the DICOM SEG's) or the whole map is given back exactly.
"""

from __future__ import annotations

import zlib

import numpy as np


class LabelFrames:
    """An (N, H, W) uint8 label map, stored frame by frame.

    Args:
        count: N, the number of frames.
        frame_shape: (H, W).
    """

    def __init__(self, count: int, frame_shape: tuple[int, int]):
        self.count = int(count)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        # Per frame: (top, left, height, width) of the box holding its non-zero pixels, and the box's
        # compressed bytes; None for a frame of zeros.
        self._boxes: list[tuple[int, int, int, int] | None] = [None] * self.count
        self._data: list[bytes | None] = [None] * self.count

    @classmethod
    def of(cls, label: np.ndarray) -> LabelFrames:
        """The frames of an (N, H, W) label map."""
        frames = cls(label.shape[0], label.shape[1:3])
        for index, frame in enumerate(label):
            frames.set(index, frame)
        return frames

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.count, *self.frame_shape)

    def set(self, index: int, frame: np.ndarray) -> None:
        """Store frame ``index``: an (H, W) array of labels (bool: True is 1)."""
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(f"frame of shape {frame.shape} in a label map of frames {self.frame_shape}")
        rows = np.flatnonzero(frame.any(axis=1))
        if rows.size == 0:
            self.clear(index)
            return
        columns = np.flatnonzero(frame.any(axis=0))
        top, left = int(rows[0]), int(columns[0])
        height, width = int(rows[-1]) - top + 1, int(columns[-1]) - left + 1
        box = np.ascontiguousarray(frame[top : top + height, left : left + width], dtype=np.uint8)
        self._boxes[index] = (top, left, height, width)
        self._data[index] = zlib.compress(box, 1)

    def clear(self, index: int) -> None:
        """Make frame ``index`` all zeros."""
        self._boxes[index] = self._data[index] = None

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as a new (H, W) uint8 array."""
        frame = np.zeros(self.frame_shape, dtype=np.uint8)
        box = self._boxes[index]
        if box is not None:
            top, left, height, width = box
            frame[top : top + height, left : left + width] = np.frombuffer(
                zlib.decompress(self._data[index]), dtype=np.uint8).reshape(height, width)
        return frame

    def array(self) -> np.ndarray:
        """The whole (N, H, W) uint8 label map (N x H x W bytes)."""
        array = np.zeros(self.shape, dtype=np.uint8)
        for index in range(self.count):
            if self._boxes[index] is not None:
                array[index] = self.frame(index)
        return array

    def extent(self) -> list[int]:
        """Slicer's segment extent (i_min, i_max, j_min, j_max, k_min, k_max) of the non-zero voxels,
        i = column, j = row, k = frame; Slicer's empty extent (0, -1, 0, -1, 0, -1) without any."""
        frames = [index for index, box in enumerate(self._boxes) if box is not None]
        if not frames:
            return [0, -1, 0, -1, 0, -1]
        boxes = [self._boxes[index] for index in frames]
        return [min(left for _, left, _, _ in boxes), max(left + width - 1 for _, left, _, width in boxes),
                min(top for top, _, _, _ in boxes), max(top + height - 1 for top, _, height, _ in boxes),
                frames[0], frames[-1]]
