"""Cost of the issue-10 safety checks, as ratios against the work they guard, in one process.

- ``check_frames`` (NaN/Inf refusal) on a chunk of 8 frames of 480 x 640, against the network on
  the same chunk (default model, 256 x 256 input, one thread);
- ``content_hash`` (rerun identity) of a 300 x 480 x 640 uint8 NRRD clip, against the network time
  of its 300 frames (estimated from the chunk above);
- ``read_model_info`` (now verifying the checksum of weights and header) and ``load_model`` of the
  default model.

Run: ``python bench/bench_input_checks.py``.
"""

from __future__ import annotations

from needs import require

require("MFFMTCore")

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MFFMTCore.files import check_frames
from MFFMTCore.inference.batch import content_hash
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_file import default_model_path, load_model, read_model_info


def median_s(function: Callable[[], object], runs: int = 5) -> float:
    function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    predictor = Predictor()
    grey = np.random.default_rng(0).integers(0, 255, (8, 480, 640)).astype(np.float32)
    x = predictor._network_input(grey)

    def network() -> None:
        with torch.inference_mode():
            predictor.model(x)

    check, chunk = median_s(lambda: check_frames(grey, "bench")), median_s(network, 3)
    print(f"check_frames, 8 frames 480x640: {check * 1e3:.2f} ms; network on them {chunk * 1e3:.0f} ms; "
          f"ratio {check / chunk:.5f}")
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.nrrd"
        pixels = np.random.default_rng(0).integers(0, 255, (300, 480, 640), dtype=np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(clip))
        hashing = median_s(lambda: content_hash(clip), 3)
        clip_network = chunk * 300 / 8
        print(f"content_hash, 300-frame clip ({clip.stat().st_size / 2**20:.0f} MiB): {hashing * 1e3:.0f} ms; "
              f"network on its frames ~{clip_network:.1f} s; ratio {hashing / clip_network:.5f}")
    path = default_model_path()
    print(f"default model: read_model_info {median_s(lambda: read_model_info(path)) * 1e3:.0f} ms, "
          f"load_model {median_s(lambda: load_model(path), 3) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
