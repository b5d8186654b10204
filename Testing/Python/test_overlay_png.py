"""The overlay PNG: our encoder (Sub filter, zlib-ng) writes what the picture shows, readable by Pillow
and by SimpleITK (as Slicer loads a PNG)."""

from __future__ import annotations

import io

import numpy as np
import SimpleITK as sitk
from PIL import Image

from MFFMTCore.inference import Predictor
from MFFMTCore.inference.overlay import png_bytes, render_overlay, write_overlay


def test_png_bytes_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (5, 7, 3), (64, 33, 3)]:
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        rgb[:, : shape[1] // 2] = 255  # runs and wrap-around differences (0 - 255) both occur
        data = png_bytes(rgb)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()  # checks every chunk's CRC and the deflate stream
            assert picture.mode == "RGB" and np.array_equal(np.asarray(picture), rgb)
        path = tmp_path / f"{shape[0]}x{shape[1]}.png"
        path.write_bytes(data)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), rgb)


def test_write_overlay_writes_the_rendered_picture(model_path, sample_frames, tmp_path):
    result = Predictor(model_path).predict(str(sample_frames[0]))
    path = write_overlay(tmp_path / "overlay.png", result)
    with Image.open(path) as written:
        assert np.array_equal(np.asarray(written), np.asarray(render_overlay(result)))
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]  # no temporary left
