"""``mffmt predict`` on a folder and on a clip, stage by stage, against the bare ResNet18 it is built on.

Reports, in one process (the bare ResNet18's batched throughput is measured before and after each
run and averaged, so both see the same load from other processes on a shared machine):

- a folder of real BUS-BRA frames (``--folder-files``, default 120) through ``mffmt predict`` in a
  child process with the default outputs, wall time as a user sees it (process start, imports,
  model load included), frames/s and its ratio to the bare ResNet18 (batch 8, 224x224,
  channels-last, ``--threads`` threads);
- the same folder through ``predict_files`` in this process, with the time spent in each stage
  (read, imaging region, network input, network, post-processing (resize, sigmoid), lesion
  measurement, input check, each writer, the results table, the content hash) summed over every
  thread; stages that overlap (a writer thread) can add up to more than the wall time;
- a clip of ``--clip-frames`` 480x640 frames made of real frames: ``Predictor.predict`` frames/s
  against the bare ResNet18 at the same threads, with the same stage table;
- the folder's CPU budget: its stages run one after another on one thread in this process (no
  overlap, so no thread contends with another), each stage's ms/frame also as a share of the bare
  ResNet18's time per frame on one thread, measured just before and after: a figure that holds on
  a loaded machine, and says what 2 cores can reach at best (the sum of the shares, over 2, is the
  pipeline's frame time in bare frames when reading and writing overlap the network perfectly);
- the start of a ``mffmt predict`` process: ``import`` of the command line and its predict command;
- a ``mffmt serve`` worker (what Slicer's module starts): start to ready, first and second request.

With ``--before CHECKOUT`` the command-line figures of another checkout run alternately with this
one's (for before/after tables); for its stage tables run this script with ``PYTHONPATH=CHECKOUT``.

Run: ``python bench/bench_predict.py [--folder-files 120] [--clip-frames 32] [--threads 2] [--repeat 2]``.
The frames come from ``--images`` (default ``../shared/data/busbra/Images`` beside the repository).
"""

from __future__ import annotations

from needs import require

require("MFFMTCore")

import os

# The children start from the user's environment (a --before checkout gets no setting of this one's).
USER_ENVIRONMENT = dict(os.environ)
# mffmt's OpenMP setting (MFFMTCore.cli), before torch: this process measures the network as mffmt runs it.
import MFFMTCore.cli  # noqa: F401

# isort: split

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from bench_network import BareResNet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "busbra" / "Images"

# (stage, function name): every MFFMTCore module attribute or class attribute of that name is timed.
STAGES = [
    ("content hash", "content_hash"),
    ("read", "as_frame_stack"),
    ("imaging region", "find_imaging_region"),
    ("network input", "preprocess_frame"),
    ("network input", "preprocess_frames"),
    ("network", "forward"),
    ("post-processing", "resize_to_frame"),
    ("measurement", "find_components"),
    ("input check", "colour_share"),
    ("input check", "distance"),
    ("input check", "assess_frames"),
    ("write segmentation", "write_segmentation"),
    ("write probability", "write_result_map"),  # a streamed clip compresses its map as it leaves the network
    ("write overlay", "write_overlay"),
    ("write DICOM", "write_dicom_results"),
    ("results table", "write_results"),
]


class StageTimer:
    """Seconds spent in named functions, summed per stage over all threads (outermost call only): wall
    time, and the calling thread's CPU time (wall minus CPU: waiting for the GIL, a lock or a core)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = threading.local()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            depth = getattr(self._depth, stage, 0)
            setattr(self._depth, stage, depth + 1)
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                setattr(self._depth, stage, depth)
                if depth == 0:
                    self.seconds[stage] += time.perf_counter() - start
                    self.cpu_seconds[stage] += time.thread_time() - cpu_start
                    self.calls[stage] += 1

        timed.__wrapped_by_stage_timer__ = True
        return timed

    def install(self, model: torch.nn.Module | None, stages: list[tuple[str, str]] = STAGES) -> None:
        """Time the ``stages`` in every loaded MFFMTCore module, and ``model``'s forward pass (if given)."""
        for stage, name in stages:
            if name == "forward" and model is not None:
                original = model.forward
                model.forward = self.wrap(stage, original)
                self._undo.append(lambda original=original: model.__dict__.pop("forward", None))
                continue
            for module in [m for key, m in sys.modules.items() if key.startswith("MFFMTCore") and m is not None]:
                owners = [module, *[value for value in vars(module).values()
                                    if isinstance(value, type) and value.__module__ == module.__name__]]
                for owner in owners:
                    value = owner.__dict__.get(name)
                    if callable(value) and not getattr(value, "__wrapped_by_stage_timer__", False):
                        setattr(owner, name, self.wrap(stage, value))
                        self._undo.append(lambda owner=owner, name=name, value=value: setattr(owner, name, value))

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def bare_frames_per_second(bare: torch.nn.Module, seconds: float = 3.0, threads: int | None = None) -> float:
    """Bare ResNet18 throughput, batch 8 at 224x224, channels-last, ``torch.inference_mode``, on
    ``threads`` torch threads (default: as set)."""
    if threads is not None:
        torch.set_num_threads(threads)
    x = torch.rand(8, 1, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bare(x)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            bare(x)
            count += 8
    return count / (time.perf_counter() - start)


def make_folder(images: Path, count: int, folder: Path) -> list[Path]:
    """Links to the first ``count`` images (sorted), so that the data folder is only read."""
    folder.mkdir(parents=True)
    files = sorted(path for path in images.iterdir() if path.suffix.lower() == ".png")[:count]
    for path in files:
        (folder / path.name).symlink_to(path.absolute())  # a relative --images would dangle from the temporary folder
    return files


def make_clip(images: list[Path], frames: int) -> np.ndarray:
    """(frames, 480, 640) uint8 clip of real frames, each resized to 480x640."""
    clip = np.empty((frames, 480, 640), dtype=np.uint8)
    for index in range(frames):
        image = sitk.ReadImage(str(images[index % len(images)]), sitk.sitkUInt8)
        size = image.GetSize()
        clip[index] = sitk.GetArrayFromImage(sitk.Resample(
            image, [640, 480], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
            [image.GetSpacing()[0] * size[0] / 640, image.GetSpacing()[1] * size[1] / 480]))
    return clip


def print_stages(title: str, timer: StageTimer, wall: float, frames: int) -> None:
    print(f"  {title}: wall {wall:.2f} s, {frames / wall:.1f} frames/s; seconds per stage (all threads):")
    accounted = 0.0
    for stage in dict.fromkeys(stage for stage, _ in STAGES):
        if timer.calls.get(stage):
            seconds = timer.seconds[stage]
            accounted += seconds
            print(f"    {stage:20s} {seconds:7.2f} s  {seconds / frames * 1000:7.1f} ms/frame  ({timer.calls[stage]} calls)")
    print(f"    {'(rest)':20s} {wall - accounted:7.2f} s  (negative: stages overlapped)")


def serial_budget(predictor, inputs: list[Path], output: Path, bare: torch.nn.Module) -> None:
    """The folder's stages one after another on one thread (see the module docstring)."""
    from MFFMTCore.base.results_schema import result_columns, results_document, write_results
    from MFFMTCore.inference.outputs import write_outputs
    from MFFMTCore.inference.results_table import frame_rows

    torch.set_num_threads(1)
    before = bare_frames_per_second(bare, threads=1)
    timer = StageTimer()
    timer.install(predictor.model)
    start = time.perf_counter()
    rows = []
    for first in range(0, len(inputs), predictor.batch_size):
        chunk = inputs[first:first + predictor.batch_size]
        prepared = [predictor.prepare(path) for path in chunk]
        predictor.run_network([(item, 0, item.stack.num_frames) for item in prepared])
        for path, item in zip(chunk, prepared):
            result = predictor.result(item)
            write_outputs(result, output, path.stem)
            rows += frame_rows(result, str(path))
    write_results(output, results_document({}, {}, result_columns(predictor.class_names), [], rows))
    wall = time.perf_counter() - start
    timer.remove()
    after = bare_frames_per_second(bare, threads=1)
    bare_ms = 2000 / (before + after)
    print(f"  folder's CPU budget, stages one after another on 1 thread: wall {wall:.2f} s; bare ResNet18 "
          f"{bare_ms:.1f} ms/frame on 1 thread ({before:.1f} and {after:.1f} frames/s before and after)")
    total = 0.0
    for stage in dict.fromkeys(stage for stage, _ in STAGES):
        if timer.calls.get(stage):
            ms = timer.seconds[stage] / len(inputs) * 1000
            total += ms
            print(f"    {stage:20s} {ms:7.1f} ms/frame  {ms / bare_ms:5.2f} bare frames")
    rest = wall / len(inputs) * 1000 - total
    print(f"    {'(rest)':20s} {rest:7.1f} ms/frame  {rest / bare_ms:5.2f} bare frames")
    print(f"    {'all':20s} {wall / len(inputs) * 1000:7.1f} ms/frame  {wall / len(inputs) * 1000 / bare_ms:5.2f} "
          f"bare frames; on 2 cores at best {2 * bare_ms / (wall / len(inputs) * 1000):.2f}x the bare ResNet18 on 1 thread")


def child_env(code: Path = ROOT) -> dict[str, str]:
    """The environment of a child that imports MFFMTCore from the checkout ``code`` (started in ``code``:
    ``python -c`` and ``-m`` put the working folder before PYTHONPATH)."""
    return {**USER_ENVIRONMENT, "PYTHONPATH": str(code)}


def import_seconds(code: Path = ROOT) -> tuple[float, bool]:
    """A fresh interpreter of checkout ``code`` importing what ``mffmt predict`` imports before it loads
    the model (``mffmt predict --help`` parses its command line as a run does): seconds, and whether
    MONAI was imported."""
    script = ("import contextlib, io, sys, time; s = time.perf_counter(); import MFFMTCore.cli\n"
              "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
              "    MFFMTCore.cli.main(['predict', '--help'])\n"
              "print(time.perf_counter() - s, 'monai' in sys.modules)")
    seconds, monai = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                    env=child_env(code), cwd=code).stdout.split()
    return float(seconds), monai == "True"


def folder_command(folder: Path, output: Path, threads: int, code: Path = ROOT) -> float:
    """Wall time of ``mffmt predict FOLDER`` in a child process (process start included), from checkout ``code``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "MFFMTCore.cli", "predict", str(folder), "--output", str(output),
                    "--threads", str(threads), "--progress", "none"], check=True, env=child_env(code), cwd=code)
    return time.perf_counter() - start


def serve_start(code: Path, frame: Path, output: Path) -> str:
    """A ``mffmt serve`` worker of checkout ``code``: start to ready, then the first and second ``predict``
    of one real frame into files (what Apply asks for), as Slicer's module would see them."""
    from MFFMTCore.serving.client import WorkerClient

    # `python -m` puts the working folder first on the path: the worker starts in its checkout.
    here = os.getcwd()
    os.chdir(code)
    try:
        start = time.perf_counter()
        worker = WorkerClient(threads=2, env=child_env(code))
        ready = time.perf_counter() - start
    finally:
        os.chdir(here)
    figures = []
    for number in range(2):
        start = time.perf_counter()
        worker.predict([frame], output / f"apply{number}")
        figures.append(time.perf_counter() - start)
    worker.close()
    return (f"start to ready {ready:.2f} s, first predict {figures[0]:.2f} s, second {figures[1]:.2f} s; "
            f"ready + first {ready + figures[0]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--folder-files", type=int, default=120)
    parser.add_argument("--clip-frames", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--stages-only", action="store_true", help="only the stage tables (in this process)")
    parser.add_argument("--budget-only", action="store_true", help="only the folder's CPU budget (in this process)")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="another checkout (e.g. the main branch) whose `mffmt predict` runs alternately with "
                             "this one's on the folder, each beside its own bare ResNet18 figure")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"bench_predict.py: no images at {args.images}; pass --images FOLDER")
    from MFFMTCore.inference.batch import find_inputs, predict_files
    from MFFMTCore.inference.predictor import Predictor

    torch.manual_seed(0)
    bare = BareResNet("resnet18").eval().to(memory_format=torch.channels_last)
    print(f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        files = make_folder(args.images, args.folder_files, work / "in")
        if args.budget_only:
            predictor = Predictor()
            predictor.predict(files[0])  # warm-up
            serial_budget(predictor, find_inputs([work / "in"]), work / "budget", bare)
            return
        torch.set_num_threads(args.threads)
        checkouts = [("before", args.before), ("this checkout", ROOT)] if args.before else [("this checkout", ROOT)]
        for name, code in [] if args.stages_only else checkouts:
            for _run in range(args.repeat):
                seconds, monai = import_seconds(code)
                print(f"process start of {name}: `mffmt predict` imports {seconds:.2f} s"
                      f"{' (MONAI among them)' if monai else ''}; load {os.getloadavg()[0]:.1f}")
        for run in range(0 if args.stages_only else args.repeat):
            for name, code in checkouts:
                # The reference is the bare network at its best on these cores: on all --threads, or on
                # one thread when the others are busy (on a loaded machine one thread can be faster).
                before = [bare_frames_per_second(bare, threads=count) for count in (args.threads, 1)]
                wall = folder_command(work / "in", work / f"out{run}_{len(name)}", args.threads, code)
                after = [bare_frames_per_second(bare, threads=count) for count in (args.threads, 1)]
                full, one = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                reference = max(full, one)
                print(f"folder of {len(files)} frames, `mffmt predict` of {name} in a child, {args.threads} threads: "
                      f"{wall:.2f} s, {len(files) / wall:.1f} frames/s; bare ResNet18 {full:.1f} frames/s on "
                      f"{args.threads} threads ({before[0]:.1f} before, {after[0]:.1f} after), {one:.1f} on 1; "
                      f"ratio to the better {len(files) / wall / reference:.2f}; load {os.getloadavg()[0]:.1f}")

        for name, code in [] if args.stages_only else checkouts:
            print(f"`mffmt serve` of {name}: {serve_start(code, files[0], work / f'serve_{len(name)}')}; "
                  f"load {os.getloadavg()[0]:.1f}")

        predictor = Predictor()
        inputs = find_inputs([work / "in"])
        print(f"stage tables of {Path(sys.modules['MFFMTCore'].__file__).parents[1]}")
        torch.set_num_threads(args.threads)
        timer = StageTimer()
        timer.install(predictor.model)
        start = time.perf_counter()
        predict_files(predictor, inputs, work / "profile")
        print_stages(f"folder, predict_files in this process, {args.threads} threads", timer,
                     time.perf_counter() - start, len(inputs))
        timer.remove()
        shutil.rmtree(work / "profile")
        serial_budget(predictor, inputs, work / "budget", bare)
        shutil.rmtree(work / "budget")

        clip = make_clip(files, args.clip_frames)
        torch.set_num_threads(args.clip_threads)
        predictor.predict(clip[:8])  # warm-up
        for _run in range(args.repeat):
            before = bare_frames_per_second(bare)
            start = time.perf_counter()
            predictor.predict(clip)
            wall = time.perf_counter() - start
            after = bare_frames_per_second(bare)
            reference = (before + after) / 2
            print(f"clip {clip.shape}, Predictor.predict, {args.clip_threads} thread(s): {wall:.2f} s, "
                  f"{len(clip) / wall:.1f} frames/s; bare ResNet18 {reference:.1f} frames/s; "
                  f"ratio {len(clip) / wall / reference:.2f}")
        timer = StageTimer()
        timer.install(predictor.model)
        start = time.perf_counter()
        predictor.predict(clip)
        print_stages(f"clip, Predictor.predict, {args.clip_threads} thread(s)", timer, time.perf_counter() - start,
                     len(clip))
        clip_file = work / "clip" / "clip.nrrd"
        clip_file.parent.mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(clip), str(clip_file))
        timer.seconds.clear()
        timer.calls.clear()
        start = time.perf_counter()
        predict_files(predictor, [clip_file], work / "clip_out")
        print_stages(f"clip file, predict_files (default outputs), {args.clip_threads} thread(s)", timer,
                     time.perf_counter() - start, len(clip))
        timer.remove()


if __name__ == "__main__":
    main()
