"""The overlay PNG of ``mffmt predict``: rendering and encoding time and file size, per encoder.

Predicts on ``--files`` real BUS-BRA frames with the default model, renders each overlay once
(:func:`MFFMTCore.inference.overlay.render_overlay`), then encodes the same pictures, in turn and
``--repeat`` times, with:

- ``png_bytes``: what ``write_overlay`` writes (Sub filter on every row, zlib-ng at
  ``PNG_COMPRESSION_LEVEL``), and the same at zlib-ng levels 1 and 6;
- Pillow's PNG encoder (adaptive filter per row, the system's zlib) at levels 1 (what the overlay
  used before), 6 (Pillow's default) and 0 (no compression).

Reports the median milliseconds per picture and the mean KiB per file, and checks that every
``png_bytes`` file reads back (Pillow) to the rendered picture exactly. Encoders run alternately, so
load from other processes on a shared machine falls on all of them alike: compare the ratios.

Run: ``python bench/bench_overlay.py [--files 12] [--repeat 3]``. The frames come from ``--images``
(default ``../shared/data/busbra/Images`` beside the repository).
"""

from __future__ import annotations

from needs import require

require("MFFMTCore")

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from MFFMTCore.inference import overlay
from MFFMTCore.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "busbra" / "Images"


def pillow(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(rgb: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def ours(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(rgb: np.ndarray) -> bytes:
        saved, overlay.PNG_COMPRESSION_LEVEL = overlay.PNG_COMPRESSION_LEVEL, level
        try:
            return overlay.png_bytes(rgb)
        finally:
            overlay.PNG_COMPRESSION_LEVEL = saved

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = sorted(args.images.glob("*.png"))[: args.files]
    if not files:
        parser.error(f"no PNG files in {args.images}")

    predictor = Predictor()
    results = [predictor.predict(str(path)) for path in files]
    render_ms = []
    for result in results:
        start = time.perf_counter()
        overlay.render_overlay(result)
        render_ms.append(1000 * (time.perf_counter() - start))
    pictures = [np.asarray(overlay.render_overlay(result)) for result in results]

    level = overlay.PNG_COMPRESSION_LEVEL
    encoders = {f"png_bytes, zlib-ng level {level} (written)": ours(level),
                "png_bytes, zlib-ng level 1": ours(1), "png_bytes, zlib-ng level 6": ours(6),
                "Pillow level 1 (before)": pillow(1), "Pillow level 6": pillow(6), "Pillow level 0": pillow(0)}
    times: dict[str, list[float]] = {name: [] for name in encoders}
    sizes: dict[str, list[int]] = {name: [] for name in encoders}
    for _ in range(args.repeat):
        for picture in pictures:
            for name, encode in encoders.items():
                start = time.perf_counter()
                data = encode(picture)
                times[name].append(1000 * (time.perf_counter() - start))
                sizes[name].append(len(data))
                if name.startswith("png_bytes"):
                    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), picture), name
    before = statistics.median(times["Pillow level 1 (before)"])
    report = {
        "frames": len(files),
        "picture_size": [list(picture.shape[:2]) for picture in pictures[:3]],
        "render_ms": round(statistics.median(render_ms), 2),
        "encoders": {name: {"ms": round(statistics.median(times[name]), 2),
                            "over_before": round(statistics.median(times[name]) / before, 2),
                            "kib": round(float(np.mean(sizes[name])) / 1024, 1)} for name in encoders},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
