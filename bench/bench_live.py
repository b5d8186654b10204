"""Live segmentation over OpenIGTLink on loopback, and a warm ``mffmt serve`` worker against a cold ``mffmt predict``.

A frame source (an OpenIGTLink server in this process, sending 480x640 grey frames made from the
bundled samples) talks to ``mffmt live`` running in its own process with the default model
(224x224 input), 2 workers of 1 torch thread (``--workers``, ``--threads``). Reports, in one run:

- throughput: results per second with frames offered at 30 frames/s (latest frame wins);
- latency from frame sent to result received (STRING) at 10 frames/s offered: p50, p95;
- the bare network time per frame, two ways: the transport alone (the same server and rate, but a
  client that answers each frame at once with a label map of the same size and a result string,
  without segmenting) and the neural network alone (the default model's forward pass, batch 1,
  1 and 2 threads); the ratio of the end-to-end latency to the forward pass is the cost of transport and
  pre/post-processing; the Predictor on a whole frame in this process, interleaved with the forward
  pass, gives the pre/post-processing share alone (``predict_over_forward``);
- the offered-rate figures again with the same cores used the other way (1 worker of 2 threads,
  suffix ``_1x2``: one frame at a time on both cores; or 2 workers of 1 thread, ``_2x1``);
- memory (RSS of the ``mffmt live`` process) over ``--frames`` frames sent one after the other's
  result (first vs last tenth, and the peak);
- one frame with Grad-CAM: a warm worker (``WorkerClient.predict``, and ``segment`` in memory) vs a
  cold ``mffmt predict`` process (start, import torch, load the model, predict, write files).

With ``--before CHECKOUT`` it reports only the offered-rate figures, of another checkout's ``mffmt live``
and this one's (each child started in its checkout with it first on ``PYTHONPATH``, and checked to
import it), alternately (the first side alternates from round to round) in ``--ab-runs`` rounds, each
beside the forward pass measured in this process just after it, under each machine load of ``--busy``
(see :class:`BusyLoad`: ``0`` none; ``N`` another job of N busy-looping processes in a session of its
own; ``Ns`` the same in this benchmark's session; ``@C`` pinned to CPU C); then per load and side the
median and range of each figure.

With ``--stages`` it reports where the time of a frame goes in ``mffmt live`` at 10 frames/s offered
(of this checkout, and of ``--before``'s alternately, under the ``--busy`` loads): the live process
runs with its stages timed (receive, frame to image, read, imaging region, pixel and input checks,
network input, network, post-processing, result, reply messages, pack, send), in wall and CPU ms per
frame summed over its threads (wall above CPU: waiting for the GIL, a lock or a core), medians over
the rounds, beside the end-to-end latency and the forward pass alone. ``--live-options`` adds options
to this checkout's ``mffmt live`` in both modes (e.g. ``'--imaging-region none'``).

Run: ``python bench/bench_live.py [--seconds 20] [--frames 2000] [--workers 2] [--threads 1]``, or
``python bench/bench_live.py --before CHECKOUT [--ab-runs 3] [--busy 0 2 1s] [--seconds 8]``, or
``python bench/bench_live.py --stages [--before CHECKOUT] [--ab-runs 4] [--seconds 8]``; ``--echo PORT`` is
the bare network client it starts itself.
"""

from __future__ import annotations

from needs import require

require("MFFMTCore", "pyigtl")

# The children's environment (child_env: the user's, taken before mffmt's OpenMP setting, which
# bench_predict then makes, before torch: this process measures the network as mffmt runs it).
from bench_predict import StageTimer, child_env

# isort: split

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyigtl
import SimpleITK as sitk

from MFFMTCore.serving.igtl import IgtlClient, receive_message

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "MFFMTCore" / "samples").glob("bus_*.png"))
HEIGHT, WIDTH = 480, 640


def frames() -> list[np.ndarray]:
    """The bundled samples as 480x640 grey uint8 frames."""
    result = []
    for path in SAMPLES:
        image = sitk.ReadImage(str(path), sitk.sitkUInt8)
        resampled = sitk.Resample(image, [WIDTH, HEIGHT], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                                  [image.GetSpacing()[0] * image.GetWidth() / WIDTH,
                                   image.GetSpacing()[1] * image.GetHeight() / HEIGHT])
        result.append(sitk.GetArrayFromImage(resampled))
    return result


class FrameSource:
    """An OpenIGTLink server for one client: sends frames, records when each result comes back."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: dict[float, float] = {}  # frame timestamp -> time sent (perf_counter)
        self.answered: dict[float, float] = {}  # frame timestamp -> time its result STRING came
        self.errors = 0
        self.compute: list[float] = []  # the live process's own time per frame ("seconds" of its result)
        self.connection: socket.socket | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.connection, _ = self.listener.accept()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ready.set()
        while (message := receive_message(self.connection)) is not None:
            if message.message_type == "STRING":
                arrived = time.perf_counter()
                summary = json.loads(message.string)
                if "error" in summary:
                    self.errors += 1
                elif "seconds" in summary:
                    self.compute.append(1000 * summary["seconds"])
                with self.lock:
                    self.answered[round(message.timestamp, 6)] = arrived

    def send(self, pixels: np.ndarray, timestamp: float) -> None:
        message = pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=np.diag([0.1, 0.1, 1.0, 1.0]),
                                      timestamp=timestamp, device_name="Image_Reference")
        data = message.pack()
        with self.lock:
            self.sent[round(timestamp, 6)] = time.perf_counter()
        self.connection.sendall(data)

    def wait_answer(self, timestamp: float, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if round(timestamp, 6) in self.answered:
                    return True
            time.sleep(0.001)
        return False

    def offer(self, images: list[np.ndarray], rate: float, seconds: float, start: float) -> tuple[float, list[float]]:
        """Send frames at ``rate`` for ``seconds``; returns (results per second, latencies in ms)."""
        count = int(rate * seconds)
        began = time.perf_counter()
        for index in range(count):
            delay = began + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send(images[index % len(images)], start + index)
        self.wait_answer(start + count - 1)  # the newest frame is never dropped: its result ends the run
        with self.lock:
            done = [t for t in (start + i for i in range(count)) if round(t, 6) in self.answered]
            latencies = [1000 * (self.answered[round(t, 6)] - self.sent[round(t, 6)]) for t in done]
            arrivals = sorted(self.answered[round(t, 6)] for t in done)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        return (len(arrivals) - 1) / span, latencies


def echo(port: int) -> None:
    """The bare-network client: answer each frame at once with a same-size label map and a result string."""
    client: IgtlClient

    def answer(message: pyigtl.MessageBase) -> None:
        if message.message_type != "IMAGE":
            return
        label = pyigtl.ImageMessage(np.zeros(message.image.shape, np.uint8), ijk_to_world_matrix=message.ijk_to_world_matrix,
                                    timestamp=message.timestamp, device_name="MFFMTLabel")
        text = json.dumps({"timestamp": message.timestamp, "prediction": "benign", "p_malignant": 0.5})
        client.send(label, pyigtl.StringMessage(text, timestamp=message.timestamp, device_name="MFFMTResult"))

    client = IgtlClient("127.0.0.1", port, answer).start()
    sys.stdin.read()  # until the benchmark closes our stdin
    client.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def live_figures(images: list[np.ndarray], seconds: float, frame_count: int, threads: int, workers: int,
                 code: Path = ROOT, options: Sequence[str] = ()) -> dict:
    """Figures of one ``mffmt live`` process of checkout ``code`` (with more command-line ``options``);
    the memory run is left out when ``frame_count`` is 0."""
    source = FrameSource()
    process = subprocess.Popen([sys.executable, "-m", "MFFMTCore", "live", "--igtl", f"127.0.0.1:{source.port}",
                                "--threads", str(threads), "--workers", str(workers), "--report-every", "100000",
                                *options],
                               stderr=subprocess.DEVNULL, env=child_env(code), cwd=code)
    try:
        source.ready.wait(300)
        source.send(images[0], 1.0)  # warm-up: the first frame pays for lazy initialisation
        source.wait_answer(1.0, 300)
        fps, _ = source.offer(images, 30.0, seconds, 1000.0)
        source.compute.clear()
        _, latencies = source.offer(images, 10.0, seconds, 100000.0)
        compute = list(source.compute)
        memory, began = [], time.perf_counter()
        for index in range(frame_count):
            timestamp = 1_000_000.0 + index
            source.send(images[index % len(images)], timestamp)
            if not source.wait_answer(timestamp):
                raise RuntimeError(f"no result for frame {index}")
            if index % 20 == 0:
                memory.append(rss_mib(process.pid))
        lockstep_fps = frame_count / (time.perf_counter() - began)
    finally:
        process.terminate()
        process.wait(30)
    figures = {"frames_per_second_at_30_offered": round(fps, 2), "latency_ms_p50_at_10": round(percentile(latencies, 50), 1),
               "latency_ms_p95_at_10": round(percentile(latencies, 95), 1), "answered_at_10": len(latencies),
               "offered_at_10": int(10 * seconds), "compute_ms_p50_at_10": round(percentile(compute, 50), 1),
               "error_replies": source.errors}
    if not memory:
        return figures
    tenth = max(1, len(memory) // 10)
    return figures | {"memory_frames": frame_count, "lockstep_frames_per_second": round(lockstep_fps, 2),
                      "rss_mib_first_tenth": round(statistics.mean(memory[:tenth]), 1),
                      "rss_mib_last_tenth": round(statistics.mean(memory[-tenth:]), 1),
                      "rss_mib_peak": round(max(memory), 1)}


def network_figures(images: list[np.ndarray], seconds: float) -> dict:
    source = FrameSource()
    process = subprocess.Popen([sys.executable, __file__, "--echo", str(source.port)], stdin=subprocess.PIPE)
    try:
        source.ready.wait(60)
        source.send(images[0], 1.0)
        source.wait_answer(1.0)
        _, latencies = source.offer(images, 10.0, seconds, 100000.0)
    finally:
        process.stdin.close()
        process.wait(30)
    return {"network_ms_p50_at_10": round(percentile(latencies, 50), 2),
            "network_ms_p95_at_10": round(percentile(latencies, 95), 2)}


def forward_ms(model, input_size: tuple[int, int], threads: int = 1, runs: int = 30) -> float:
    """Median ms of ``model``'s forward pass alone (batch 1 at ``input_size``, as the Predictor runs it)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.rand(1, 1, *input_size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(runs + 3):
            started = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times[3:])


def imported_from(code: Path) -> Path:
    """Where a child started as :func:`live_figures` starts ``mffmt live`` imports MFFMTCore from."""
    found = subprocess.run([sys.executable, "-c", "import MFFMTCore; print(MFFMTCore.__file__)"], capture_output=True,
                           text=True, check=True, env=child_env(code), cwd=code).stdout.strip()
    return Path(found).parent.parent


class BusyLoad:
    """Busy-looping Python processes from entering the ``with`` block to leaving it: the load of another
    job on the machine.

    Where the kernel groups processes by session (``/proc/sys/kernel/sched_autogroup_enabled``, as on
    this project's machine), CPU time is shared fairly between sessions first, whatever the nice
    level: another user's job then takes its cores' share from ``mffmt live`` and this benchmark
    together. ``N`` is such a job (N processes in a session of their own); ``Ns`` are N processes in
    this benchmark's session (they share its CPU time with ``mffmt live``); ``@C`` pins them to CPU C.

    Args:
        spec: ``"N"``, ``"Ns"``, ``"N@C"`` or ``"Ns@C"``.
    """

    def __init__(self, spec: str):
        load, _, cpu = spec.partition("@")
        self.spec, self.same_session = spec, load.endswith("s")
        self.count, self.cpu = int(load.removesuffix("s")), int(cpu) if cpu else None
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> BusyLoad:
        loop = "while True: pass"
        if self.same_session:
            self.processes = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(self.count)]
        elif self.count:
            # One session for the N processes, as one job's threads: its leader forks the others.
            script = f"import os\nfor _ in range({self.count} - 1):\n    if os.fork() == 0:\n        break\n{loop}"
            self.processes = [subprocess.Popen([sys.executable, "-c", script], start_new_session=True)]
        if self.cpu is not None:
            time.sleep(0.2)  # the leader's children
            for pid in self._pids():
                os.sched_setaffinity(pid, {self.cpu})
        time.sleep(1.0 if self.count else 0.0)  # let the scheduler settle the new load
        return self

    def _pids(self) -> list[int]:
        if self.same_session:
            return [process.pid for process in self.processes]
        leader = self.processes[0].pid
        return [leader] + [int(pid) for pid in Path(f"/proc/{leader}/task/{leader}/children").read_text().split()]

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            if not self.same_session:
                os.killpg(process.pid, signal.SIGKILL)
            process.kill()
            process.wait()
        self.processes.clear()


AB_FIGURES = ("latency_ms_p50_at_10", "latency_ms_p95_at_10", "compute_ms_p50_at_10", "frames_per_second_at_30_offered",
              "forward_ms_1thread", "latency_over_forward_p50")


def before_after(images: list[np.ndarray], before: Path, rounds: int, loads: list[str], seconds: float,
                 threads: int, workers: int, options: Sequence[str] = ()) -> dict:
    """The offered-rate figures of ``before``'s ``mffmt live`` and this checkout's, alternately (see the
    module's docstring); each run beside the forward pass alone measured in this process just after it."""
    from MFFMTCore.inference.predictor import Predictor

    sides = {"before": before.resolve(), "this checkout": ROOT}
    for name, code in sides.items():
        if imported_from(code) != code:
            raise RuntimeError(f"{name}: a child in {code} imports MFFMTCore from {imported_from(code)}")
    predictor = Predictor()
    runs: dict[str, dict[str, list[dict]]] = {load: {name: [] for name in sides} for load in loads}
    for number in range(rounds):
        order = list(sides) if number % 2 == 0 else list(sides)[::-1]
        for load in loads:
            with BusyLoad(load):
                for name in order:
                    figures = live_figures(images, seconds, 0, threads, workers, sides[name],
                                           options if sides[name] == ROOT else ())
                    figures["forward_ms_1thread"] = round(forward_ms(predictor.model, predictor.input_size), 1)
                    figures["latency_over_forward_p50"] = round(figures["latency_ms_p50_at_10"]
                                                                / figures["forward_ms_1thread"], 2)
                    figures["load_average"] = round(os.getloadavg()[0], 2)
                    runs[load][name].append(figures)
                    print(json.dumps({"round": number, "busy": load, "side": name}
                                     | {key: figures[key] for key in (*AB_FIGURES, "error_replies", "load_average")}),
                          file=sys.stderr, flush=True)
    summary = {}
    for load, by_side in runs.items():
        for name, figures in by_side.items():
            summary[f"busy {load}, {name}"] = {  # median [range]
                key: f"{statistics.median(f[key] for f in figures):.2f} [{min(f[key] for f in figures)}, "
                     f"{max(f[key] for f in figures)}]" for key in AB_FIGURES}
    return {"before": str(sides["before"]), "this checkout": str(ROOT), "this checkout's live options": " ".join(options),
            "rounds": rounds, "seconds": seconds, "threads": threads, "workers": workers, "figures": summary}


# The live path's stages, as bench_predict's STAGES: (stage, function name in MFFMTCore), plus pyigtl's
# unpack (of the frames received) and pack (of the replies), and the network's forward pass.
LIVE_STAGES = [
    ("frame to image", "frame_image"),
    ("read", "as_frame_stack"),
    ("imaging region", "find_imaging_region"),
    ("pixel check", "check_frames"),
    ("input check", "colour_share"),
    ("input check", "layout_scores"),
    ("network input", "preprocess_frames"),
    ("post-processing", "resize_to_frame"),
    ("result", "result"),  # Predictor.result: lesion measurement, feature distance, input checks
    ("predict", "predict"),  # Predictor.predict: all of the above
    ("segment", "segment"),  # LiveSegmenter.segment: predict and the reply messages
    ("send", "send"),  # IgtlClient.send: pack and the socket
]


def stages_child(argv: list[str]) -> None:
    """``mffmt live`` (``argv``) with its stages timed; SIGUSR1 clears the times (after the warm-up),
    and at its end the times go to stdout as JSON."""

    import MFFMTCore.serving.live
    from MFFMTCore.network.mffmt import MFFMT

    timer = StageTimer()
    timer.install(None, LIVE_STAGES)
    MFFMT.forward = timer.wrap("network", MFFMT.forward)
    pyigtl.MessageBase.unpack = timer.wrap("receive (unpack)", pyigtl.MessageBase.unpack)
    pyigtl.MessageBase.pack = timer.wrap("pack", pyigtl.MessageBase.pack)
    segmenter = MFFMTCore.serving.live.LiveSegmenter
    segmenter.step = timer.wrap("step", segmenter.step)
    MFFMTCore.serving.latest.LatestItems.get = timer.wrap("queue wait", MFFMTCore.serving.latest.LatestItems.get)

    def clear(signum, frame) -> None:
        for table in (timer.seconds, timer.cpu_seconds, timer.calls):
            table.clear()

    signal.signal(signal.SIGUSR1, clear)
    MFFMTCore.cli.main(argv)
    print(json.dumps({"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "calls": timer.calls}))


def stage_figures(images: list[np.ndarray], seconds: float, threads: int, workers: int, code: Path = ROOT,
                  options: Sequence[str] = ()) -> dict:
    """Where the time of a frame goes in ``mffmt live`` (checkout ``code``) at 10 frames/s offered: per
    stage wall and CPU ms per segmented frame, summed over the live process's threads."""
    source = FrameSource()
    argv = ["live", "--igtl", f"127.0.0.1:{source.port}", "--threads", str(threads), "--workers", str(workers),
            "--report-every", "100000", *options]
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--stages-child", " ".join(argv)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(code),
                               cwd=code)
    try:
        source.ready.wait(300)
        for index in range(3):  # warm-up, then the times start afresh
            source.send(images[index % len(images)], 1.0 + index)
            source.wait_answer(1.0 + index, 300)
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        source.compute.clear()
        _, latencies = source.offer(images, 10.0, seconds, 100000.0)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    times = json.loads(output)
    frames = times["calls"]["segment"]
    table = {stage: {"wall_ms": round(1000 * times["seconds"][stage] / frames, 2),
                     "cpu_ms": round(1000 * times["cpu_seconds"][stage] / frames, 2),
                     "calls_per_frame": round(times["calls"][stage] / frames, 2)} for stage in times["seconds"]}
    return {"frames": frames, "latency_ms_p50_at_10": round(percentile(latencies, 50), 1),
            "latency_ms_mean_at_10": round(statistics.mean(latencies), 1), "stages": table}


# Own time of the stages that hold others: (stage, outer, the inner stages it holds).
OWN_TIME = [
    ("predict (rest)", "predict", ("read", "imaging region", "pixel check", "input check", "network input", "network",
                                   "post-processing", "result")),
    ("reply messages", "segment", ("predict", "frame to image")),
    ("send (socket)", "send", ("pack",)),
    ("step (rest)", "step", ("queue wait", "segment", "send")),
]


def stage_report(images: list[np.ndarray], args: argparse.Namespace) -> dict:
    """:func:`stage_figures` of this checkout (and ``--before``'s, alternately) in ``--ab-runs`` rounds under
    each ``--busy`` load: per stage the median over rounds of wall and CPU ms per frame, and the forward
    pass alone (this process, 1 thread) measured after each run."""
    from MFFMTCore.inference.predictor import Predictor

    sides = {"this checkout": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    predictor = Predictor()
    runs: dict[tuple[str, str], list[dict]] = {}
    for number in range(args.ab_runs):
        for load in args.busy:
            with BusyLoad(load):
                for name in list(sides)[::1 if number % 2 == 0 else -1]:
                    figures = stage_figures(images, args.seconds, args.threads, args.workers, sides[name],
                                            args.live_options.split() if sides[name] == ROOT else ())
                    figures["forward_ms_1thread"] = forward_ms(predictor.model, predictor.input_size)
                    runs.setdefault((load, name), []).append(figures)
                    print(json.dumps({"round": number, "busy": load, "side": name, "frames": figures["frames"],
                                      "latency_ms_p50_at_10": figures["latency_ms_p50_at_10"],
                                      "forward_ms_1thread": round(figures["forward_ms_1thread"], 1)}),
                          file=sys.stderr, flush=True)
    report: dict = {"this checkout's live options": args.live_options}
    for (load, name), figures in runs.items():
        tables = []
        for run in figures:
            table = {stage: dict(values) for stage, values in run["stages"].items()}
            for own, outer, inner in OWN_TIME:
                if outer in table:
                    table[own] = {key: round(table[outer][key] - sum(table.get(stage, {}).get(key, 0.0) for stage in inner), 2)
                                  for key in ("wall_ms", "cpu_ms")}
            tables.append(table)
        stages = sorted({stage for table in tables for stage in table},
                        key=lambda stage: -statistics.median(t.get(stage, {}).get("wall_ms", 0.0) for t in tables))
        report[f"busy {load}, {name}"] = {
            "latency_ms_p50_at_10": round(statistics.median(run["latency_ms_p50_at_10"] for run in figures), 1),
            "forward_ms_1thread": round(statistics.median(run["forward_ms_1thread"] for run in figures), 1),
            "ms_per_frame (wall / cpu; medians)": {
                stage: " / ".join(f"{statistics.median(t.get(stage, {}).get(key, 0.0) for t in tables):.2f}"
                                  for key in ("wall_ms", "cpu_ms")) for stage in stages}}
    return report


def forward_figures(images: list[np.ndarray], runs: int = 30) -> dict:
    """On 1 and 2 threads, in this process: the default model's forward pass alone (batch 1, its input
    size, as the Predictor runs it) and, interleaved with it, the Predictor on a whole 480x640 frame
    (imaging region, network input, forward pass, maps back on the frame, lesion regions and their
    measurements, input check): their ratio is what pre- and post-processing add, without transport."""
    import torch

    from MFFMTCore.inference.predictor import Predictor

    predictor = Predictor()
    x = torch.rand(1, 1, *predictor.input_size).contiguous(memory_format=torch.channels_last)
    figures = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        forward, whole = [], []
        for index in range(runs + 3):
            started = time.perf_counter()
            with torch.inference_mode():
                predictor.model(x)
            forward.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            predictor.predict(images[index % len(images)])
            whole.append(1000 * (time.perf_counter() - started))
        figures[f"forward_ms_p50_{threads}thread"] = round(statistics.median(forward[3:]), 1)
        figures[f"predict_ms_p50_{threads}thread"] = round(statistics.median(whole[3:]), 1)
        figures[f"predict_over_forward_{threads}thread"] = round(statistics.median(whole[3:]) / statistics.median(forward[3:]), 2)
    return figures


def warm_vs_cold(runs: int, threads: int) -> dict:
    from MFFMTCore.serving.client import WorkerClient

    sample = str(SAMPLES[0])
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(sample, sitk.sitkUInt8))
    with tempfile.TemporaryDirectory() as folder:
        cold = []
        for run in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "MFFMTCore", "predict", sample, "--output", f"{folder}/cold{run}",
                            "--gradcam", "--threads", str(threads), "--progress", "none"], check=True)
            cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        with WorkerClient(threads=threads) as worker:
            start_seconds = time.perf_counter() - started
            worker.predict([sample], f"{folder}/warmup", gradcam=True)
            warm_files, warm_memory = [], []
            for run in range(runs):
                started = time.perf_counter()
                worker.predict([sample], f"{folder}/warm{run}", gradcam=True)
                warm_files.append(time.perf_counter() - started)
                started = time.perf_counter()
                worker.segment(pixels, gradcam=True, maps=("label", "probability", "gradcam"))
                warm_memory.append(time.perf_counter() - started)
    return {"cold_predict_s": round(statistics.median(cold), 3), "worker_start_s": round(start_seconds, 3),
            "warm_predict_files_s": round(statistics.median(warm_files), 3),
            "warm_segment_in_memory_s": round(statistics.median(warm_memory), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each offered-rate run")
    parser.add_argument("--frames", type=int, default=2000, help="frames for the memory run (the goal names 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the warm/cold comparison (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the live process, worker and predict")
    parser.add_argument("--workers", type=int, default=2, help="frames the live process segments at once")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="another checkout (e.g. the main branch) whose `mffmt live` runs alternately with this "
                             "one's; only the offered-rate figures")
    parser.add_argument("--ab-runs", type=int, default=3, help="rounds of the --before comparison")
    parser.add_argument("--busy", nargs="+", default=["0"], metavar="N[@CPU]",
                        help="machine loads of the --before comparison: N busy-looping processes (on CPU C)")
    parser.add_argument("--live-options", default="", metavar="OPTIONS",
                        help="more options of this checkout's `mffmt live` in --before and --stages runs, e.g. "
                             "'--imaging-region none'")
    parser.add_argument("--stages", action="store_true",
                        help="only where the time of a frame goes in `mffmt live` (of --before too, if given)")
    parser.add_argument("--echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--stages-child", metavar="ARGS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo is not None:
        echo(args.echo)
        return
    if args.stages_child is not None:
        stages_child(args.stages_child.split())
        return
    images = frames()
    if args.stages:
        print(json.dumps(stage_report(images, args), indent=1))
        return
    if args.before is not None:
        print(json.dumps(before_after(images, args.before, args.ab_runs, args.busy, args.seconds, args.threads,
                                      args.workers, args.live_options.split()), indent=1))
        return
    figures = {"cpus": len(os.sched_getaffinity(0)), "threads": args.threads, "workers": args.workers,
               "load_average_at_start": os.getloadavg()[0]}
    figures.update(network_figures(images, args.seconds))
    figures.update(live_figures(images, args.seconds, args.frames, args.threads, args.workers))
    if args.threads * args.workers > 1:
        # The same cores used the other way: one frame on all threads vs one frame per core.
        threads, workers = (1, args.threads) if args.workers == 1 else (args.workers, 1)
        other = live_figures(images, args.seconds, 0, threads, workers)
        figures.update({f"{key}_{workers}x{threads}": value for key, value in other.items()})
    figures.update(forward_figures(images))
    # End to end against the network forward pass alone: transport, pre- and post-processing on top.
    forward = figures[f"forward_ms_p50_{min(args.threads, 2)}thread"]
    figures["latency_over_forward_p50"] = round(figures["latency_ms_p50_at_10"] / forward, 2)
    figures.update(warm_vs_cold(args.runs, args.threads * args.workers))
    figures["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
