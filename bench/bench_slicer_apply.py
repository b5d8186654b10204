"""Apply to segmentation in the scene: the module's ``logic.process`` on one frame with Grad-CAM, on slicer-core.

Loads the module as Slicer loads it (``Testing/Python/slicercore``: Slicer's real MRML and module
logics from the ``slicer-core`` wheel), puts a bundled BUS-BRA sample into the scene as Slicer's
loader leaves a PNG, and times ``logic.process(volume, gradcam=True)`` from the call until it has
returned with the segmentation, probability, Grad-CAM, table, points and calipers in the scene:
what a user waits for after pressing Apply. Reports, in one run:

- ``first``: the first Apply of the session (with a warm worker: starting it, importing torch and
  loading the model happen here, once);
- ``warm``: the next ``--runs`` Apply runs, median and max (each run is a new result in the scene);
- ``worker_predict``: the warm worker's ``predict`` op alone on the same input file (no scene work),
  run right after each warm Apply, and ``slicer_side``, the median of Apply - worker_predict:
  writing the input, the request and loading the results into the scene;
- ``child``: a cold ``mffmt predict`` child process on the same input file, started and waited for
  alone (no scene work): what every Apply paid before the module used a warm worker;
- ``start_costs``: what a worker's start is made of, in a fresh interpreter as ``mffmt serve``
  runs it: interpreter start, ``import torch``, the rest of the worker's modules (MFFMTCore's and
  what they import: SimpleITK, SciPy, pydicom ...), loading the model, and the warm-up prediction
  (median of ``--start-runs``); ``monai_imported`` says whether MONAI was imported on the way (it
  should not be: predicting needs none of it, and its package import alone cost about 2 s).

Run: ``python bench/bench_slicer_apply.py [--runs 10] [--sample bus_0012-r.png]`` (needs the dev
extras, which bring slicer-core). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from needs import require

require("MFFMTCore", "slicer_core")

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "Python"))  # slicercore: Slicer's module loading, as the tests use it


def picture_volume(slicer, png: Path):
    """The sample as Slicer's loader leaves a PNG (ITK geometry in RAS, unit spacing)."""
    image = sitk.ReadImage(str(png))
    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image)[np.newaxis],
                                          np.diag([-1.0, -1.0, 1.0, 1.0]), png.stem)


START_COSTS = """
import json, sys, time
import MFFMTCore.cli  # as `mffmt serve` starts: its OpenMP setting comes before torch
started = time.perf_counter()
import torch
torch_done = time.perf_counter()
import MFFMTCore.commands.serve
from MFFMTCore.inference.predictor import Predictor
modules_done = time.perf_counter()
predictor = Predictor()
loaded = time.perf_counter()
predictor.warm_up()
warm = time.perf_counter()
print(json.dumps({"import_torch_s": torch_done - started, "import_worker_modules_s": modules_done - torch_done,
                  "load_model_s": loaded - modules_done, "warm_up_s": warm - loaded,
                  "monai_imported": "monai" in sys.modules}))
"""


def start_costs(runs: int) -> dict[str, float]:
    """The parts of a worker's start (see the module docstring), median of ``runs`` fresh interpreters."""
    import subprocess

    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", START_COSTS], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT).stdout
        total = time.perf_counter() - started
        parts = json.loads(output)
        monai = parts.pop("monai_imported")
        figures.append(parts | {"interpreter_and_exit_s": total - sum(parts.values()), "total_s": total})
    medians = {key: round(statistics.median(figure[key] for figure in figures), 3) for key in figures[0]}
    return medians | {"monai_imported": monai}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="warm Apply runs after the first")
    parser.add_argument("--sample", default="bus_0012-r.png", help="bundled sample to segment")
    parser.add_argument("--no-child", action="store_true", help="skip the cold mffmt predict child")
    parser.add_argument("--start-runs", type=int, default=3, help="fresh interpreters timed for start_costs")
    args = parser.parse_args()

    import slicercore

    work = Path(tempfile.mkdtemp(prefix="bench-slicer-apply-"))
    scene = slicercore.start(work / "tmp")
    import slicer
    from MFFMTSlicerLib.slicer_nodes import writeVolumeNode
    from MFFMTSlicerLib.tasks import pythonExecutable, startCommand

    import MFFMTSlicer

    logic = MFFMTSlicer.MFFMTSlicerLogic(modelsFolder=work / "models", workRoot=work / "work")
    volume = picture_volume(slicer, ROOT / "MFFMTCore" / "samples" / args.sample)
    # Each warm Apply is followed by the worker's predict op alone on the same input file (no scene
    # work), so that both see the same load on a shared machine.
    inputPath = writeVolumeNode(volume, work / "bare" / "input.nrrd")
    times, bare = [], []
    worker = getattr(logic, "worker", None)  # None on the code before the warm worker (every Apply a child)
    for run in range(args.runs + 1):
        start = time.perf_counter()
        segmentation, rows = logic.process(volume, gradcam=True)
        times.append(time.perf_counter() - start)
        assert rows and segmentation.GetSegmentation().GetNumberOfSegments() == 1
        client = worker.ready(None, "cpu") if worker is not None else None
        if run and client is not None:
            start = time.perf_counter()
            client.predict([inputPath], work / "bare" / "output", gradcam=True, overwrite=True)
            bare.append(time.perf_counter() - start)
    report = {
        "sample": args.sample,
        "first_s": round(times[0], 3),
        "warm_median_s": round(statistics.median(times[1:]), 3),
        "warm_max_s": round(max(times[1:]), 3),
        "runs": args.runs,
        "nodes_in_scene": scene.GetNumberOfNodes(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    if bare:
        report["worker_predict_median_s"] = round(statistics.median(bare), 3)
        report["slicer_side_median_s"] = round(statistics.median(t - b for t, b in zip(times[1:], bare)), 3)
    if not args.no_child:
        inputPath = writeVolumeNode(volume, work / "child" / "input.nrrd")
        start = time.perf_counter()
        # The module's path before the warm worker: one mffmt predict child per Apply.
        command = [pythonExecutable(), "-m", "MFFMTCore", "predict", "--output", str(work / "child" / "output"),
                   "--gradcam", "--progress", "json", "--", str(inputPath.absolute())]
        process = startCommand(command, work / "child")
        while not process.is_finished():
            process.read_lines()
            time.sleep(0.01)
        report["child_s"] = round(time.perf_counter() - start, 3)
        report["child_exit"] = process.returncode
        report["child_over_warm"] = round(report["child_s"] / report["warm_median_s"], 1)
    if worker is not None:
        worker.close()
    report["start_costs"] = start_costs(args.start_runs)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
