"""Inference speed and memory of MFFMT18 on this CPU, against the bare ResNet18 it is built on.

Reports, in one process (the 300-frame clip runs in a child process so its peak memory is its own):

- per-frame latency, batch 1, 256x256: bare ResNet18 vs MFFMT18, eager (``torch.inference_mode``),
  eager channels-last, TorchScript (trace + freeze + optimize_for_inference) and ONNX Runtime;
- batched throughput (frames/s) at batch 8 and 16;
- the same latencies with torch's default number of threads;
- cold model-load time (``load_model`` of a saved MFFMT18 file, first call in the process);
- peak memory (RSS) and time of ``Predictor.predict`` + ``write_outputs`` on a 300 x 480 x 640
  uint8 clip, with the per-frame preprocessing cost: maps in memory, then streamed to their files
  (``maps_to``, what ``mffmt predict`` does), each in a fresh process, with the clip's frames/s as a
  ratio to the bare ResNet18's batched frames/s in that process.

Comparisons run with ``torch.set_num_threads(1)`` (the machine is shared). Weights are random:
speed does not depend on their values. Goals: MFFMT18 per frame <= 1.3x bare ResNet18; load < 1 s;
peak of the streamed clip <= 1 GB (issue 22), any input <= 2 GB (issue 21).

Run: ``python bench/bench_inference.py [--runs 20] [--clip-frames 300] [--clip-maps memory,streamed]``.
"""

from __future__ import annotations

from needs import require

require("MFFMTCore", "onnx", "onnxruntime")

import argparse
import multiprocessing
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_network import BareResNet

from MFFMTCore.model_file import ModelInfo, load_model, save_model
from MFFMTCore.network import MFFMT
from MFFMTCore.network.export import MFFMTExportWrapper

SIZE = 256


def paired_timings_ms(first: Callable[[], object], second: Callable[[], object], runs: int,
                      warmup: int = 3) -> list[tuple[float, float]]:
    """(median, minimum) ms of two functions timed alternately, so that both see the same load from
    other processes on a shared machine. The minimum is the least disturbed figure."""
    for _ in range(warmup):
        first()
        second()
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for slot, function in enumerate((first, second)):
            start = time.perf_counter()
            function()
            times[slot].append(time.perf_counter() - start)
    return [(statistics.median(t) * 1000, min(t) * 1000) for t in times]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited over fork/exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def torchscript(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x).eval()))
    return eager(module, x)


def onnxruntime_run(model: torch.nn.Module, x: torch.Tensor, path: Path, threads: int) -> Callable[[], object]:
    import onnxruntime

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return lambda: session.run(None, feed)


def channels_last_copy(model: torch.nn.Module, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    copy = factory().eval()
    copy.load_state_dict(model.state_dict())
    return copy.to(memory_format=torch.channels_last)


def variants(bare: torch.nn.Module, mffmt: torch.nn.Module, batch: int, folder: Path, threads: int) -> dict:
    """name -> (bare ResNet18 runner, MFFMT18 runner) on a batch of ``batch`` 256x256 frames."""
    x = torch.rand(batch, 1, SIZE, SIZE)
    wrapped = MFFMTExportWrapper(mffmt).eval()  # flat tuple output, what tracing and ONNX need
    last = x.contiguous(memory_format=torch.channels_last)
    return {
        "eager": (eager(bare, x), eager(mffmt, x)),
        "channels_last": (eager(channels_last_copy(bare, lambda: BareResNet("resnet18")), last),
                          eager(channels_last_copy(mffmt, MFFMT), last)),
        "torchscript": (torchscript(bare, x), torchscript(wrapped, x)),
        "onnxruntime": (onnxruntime_run(bare, x, folder / f"bare{batch}.onnx", threads),
                        onnxruntime_run(wrapped, x, folder / f"mffmt{batch}.onnx", threads)),
    }


def clip_child(model_path: str, frames: int, threads: int, streamed: bool, queue: multiprocessing.Queue) -> None:
    """In a fresh process: cold model load, then peak memory and time of predicting and writing a clip,
    with its maps in memory or streamed to their files (``maps_to``, as ``mffmt predict`` does), and
    the bare ResNet18's batched frames/s in the same process."""
    torch.set_num_threads(threads)
    from MFFMTCore.inference import Predictor
    from MFFMTCore.inference.outputs import output_paths, write_outputs
    from MFFMTCore.preprocessing import preprocess_frame

    start = time.perf_counter()
    predictor = Predictor(model_path, batch_size=8)
    cold = time.perf_counter() - start
    clip = np.random.default_rng(0).integers(0, 255, size=(frames, 480, 640), dtype=np.uint8)
    baseline = peak_rss_mb()
    frame = clip[0].astype(np.float32)
    preprocess = paired_timings_ms(lambda: preprocess_frame(frame, (SIZE, SIZE)), lambda: None, 10)[0][0]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        streaming = {"maps_to": output_paths(folder, "clip")} if streamed else {}
        result = predictor.predict(clip, spacing=(0.1, 0.1, 1.0), **streaming)
        predicted = time.perf_counter() - start
        peak_predict = peak_rss_mb()
        start = time.perf_counter()
        write_outputs(result, folder, "clip")
        written = time.perf_counter() - start
    peak = peak_rss_mb()
    # The bare network's batched speed at the model's input size, after the peaks are taken.
    bare, x = BareResNet("resnet18").eval(), torch.rand(8, 1, *predictor.input_size)
    bare_ms = paired_timings_ms(eager(bare, x), lambda: None, 5, warmup=1)[0][0]
    queue.put({"cold_load_s": cold, "baseline_mb": baseline, "peak_predict_mb": peak_predict,
               "peak_mb": peak, "predict_s": predicted, "write_s": written, "preprocess_ms": preprocess,
               "bare_fps": 8000 / bare_ms})


def run_clip(path: Path, frames: int, streamed: bool) -> dict:
    """:func:`clip_child` in a spawned process: its figures."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=clip_child, args=(str(path), frames, 1, streamed, queue))
    child.start()
    child.join()  # the child's report is a small dict: joining before reading cannot block on the queue
    if child.exitcode != 0:
        raise SystemExit(f"the clip run failed (exit status {child.exitcode})")
    return queue.get()


def report(name: str, timings: list[tuple[float, float]], batch: int) -> None:
    (bare_median, bare_min), (mffmt_median, mffmt_min) = timings
    per = f"{batch} frames" if batch > 1 else "frame"
    print(f"  {name:14s} bare ResNet18 {bare_median:7.1f} (min {bare_min:6.1f}) ms/{per}   "
          f"MFFMT18 {mffmt_median:7.1f} (min {mffmt_min:6.1f})   ratio {mffmt_median / bare_median:.2f} "
          f"(min {mffmt_min / bare_min:.2f})" + (f"   MFFMT18 {batch * 1000 / mffmt_median:.1f} frames/s"
                                                  if batch > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clip-frames", type=int, default=300)
    parser.add_argument("--skip-latency", action="store_true", help="only model load and the clip")
    parser.add_argument("--clip-maps", default="memory,streamed",
                        help="the clip runs: maps in memory, streamed to files, or both (memory alone for a "
                             "checkout from before streaming)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    bare, mffmt = BareResNet("resnet18").eval(), MFFMT().eval()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.set_num_threads(1)
        batches = [(1, args.runs), (8, max(3, args.runs // 4)), (16, max(3, args.runs // 8))]
        for batch, runs in [] if args.skip_latency else batches:
            print(f"batch {batch}, {SIZE}x{SIZE}, 1 thread, median of {runs} alternated runs:")
            for name, (run_bare, run_mffmt) in variants(bare, mffmt, batch, folder, 1).items():
                report(name, paired_timings_ms(run_bare, run_mffmt, runs, warmup=1 if batch > 1 else 3), batch)

        if not args.skip_latency:
            torch.set_num_threads(default_threads)
            print(f"batch 1, default threads ({default_threads}):")
            run_bare, run_mffmt = variants(bare, mffmt, 1, folder, default_threads)["eager"]
            report("eager", paired_timings_ms(run_bare, run_mffmt, args.runs), 1)
            torch.set_num_threads(1)

        path = folder / "mffmt18.safetensors"
        save_model(path, mffmt, ModelInfo(architecture=mffmt.architecture))
        load = paired_timings_ms(lambda: load_model(path), lambda: None, 5, warmup=1)[0]
        print(f"model load (1 thread, file {path.stat().st_size / 2**20:.1f} MiB): "
              f"median {load[0]:.0f} ms, min {load[1]:.0f} ms")

        for streamed in [kind == "streamed" for kind in args.clip_maps.split(",")]:
            clip = run_clip(path, args.clip_frames, streamed)
            fps = args.clip_frames / clip["predict_s"]
            print(f"{args.clip_frames}x480x640 uint8 clip, maps {'streamed to their files' if streamed else 'in memory'}, "
                  f"1 thread, batch 8 (fresh process, cold Predictor load {clip['cold_load_s'] * 1000:.0f} ms):")
            whole = args.clip_frames / (clip["predict_s"] + clip["write_s"])
            print(f"  predict {clip['predict_s']:.1f} s ({fps:.1f} frames/s, {fps / clip['bare_fps']:.2f}x the bare "
                  f"ResNet18's {clip['bare_fps']:.1f} frames/s at batch 8 in that process; preprocessing "
                  f"{clip['preprocess_ms']:.0f} ms/frame), write outputs {clip['write_s']:.1f} s; predict and "
                  f"write {whole:.1f} frames/s, {whole / clip['bare_fps']:.2f}x")
            print(f"  peak RSS: {clip['baseline_mb']:.0f} MB with model and clip loaded, {clip['peak_predict_mb']:.0f} MB "
                  f"after predict, {clip['peak_mb']:.0f} MB after writing the outputs")


if __name__ == "__main__":
    main()
