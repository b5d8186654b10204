"""`mffmt serve` and its torch-free client, with real worker processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from MFFMTCore.cli import main
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.inference.results_table import frame_rows
from MFFMTCore.serving.client import RequestCancelledError, RequestError, WorkerClient, WorkerError
from MFFMTCore.serving.protocol import ProtocolError, read_message, write_message


@pytest.fixture(scope="module")
def worker(model_path):
    with WorkerClient(model=model_path, threads=1) as client:
        yield client


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ended (a zombie nobody reaped counts as ended) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


def test_client_imports_neither_torch_nor_the_inference_code():
    code = ("import sys; import MFFMTCore.serving.client; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('MFFMTCore.inference', 'monai'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_protocol_round_trip_and_a_bad_attachment_spoils_only_its_message(tmp_path):
    path = tmp_path / "stream"
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with path.open("wb") as stream:
        write_message(stream, {"id": "a", "op": "segment"}, {"image": frame, "big": np.ones((2, 2), ">f4")})
        stream.write(b'{"id": "b", "arrays": [{"name": "x", "dtype": "uint8", "shape": [9]}], "attachment": 4}\nabcd')
        stream.write(b"this is not json\n")
        write_message(stream, {"id": "c"})
    with path.open("rb") as stream:
        message, arrays = read_message(stream)
        assert message["id"] == "a" and arrays["image"].dtype == np.uint16
        np.testing.assert_array_equal(arrays["image"], frame)
        np.testing.assert_array_equal(arrays["big"], np.ones((2, 2)))
        with pytest.raises(ProtocolError, match="needs more bytes") as error:
            read_message(stream)
        assert error.value.request_id == "b"
        with pytest.raises(ProtocolError, match="not JSON"):
            read_message(stream)
        assert read_message(stream)[0] == {"id": "c"}
        assert read_message(stream) is None
    with pytest.raises(ValueError):
        write_message(open(os.devnull, "wb"), {"value": float("nan")})


def test_segment_gives_what_the_predictor_gives(worker, model_path):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (90, 120), dtype=np.uint8)
    clip = rng.integers(0, 255, (3, 50, 70), dtype=np.uint8)
    geometry = {"spacing": [0.2, 0.3], "origin": [4.0, -2.0], "direction": [0.0, 1.0, 1.0, 0.0]}
    predictor = Predictor(model_path)
    for image, options in ((frame, geometry), (clip, {})):
        reply = worker.segment(image, maps=("label", "probability"), source="scan", **options)
        expected = predictor.predict(image, **options)
        layout = 0 if image.ndim == 2 else slice(None)
        np.testing.assert_array_equal(reply.maps["label"], expected.label[layout])
        np.testing.assert_allclose(reply.maps["probability"], expected.probability[layout], atol=1e-6)
        assert reply.rows == json.loads(json.dumps(frame_rows(expected, "scan")))
        assert reply.result["geometry"] == expected.geometry.to_json()
        assert (reply.result["clip"] is None) == (image.ndim == 2)
        assert reply.message["model"]["name"] == "seed0"


def test_predict_writes_what_mffmt_predict_writes(worker, model_path, sample_frames, tmp_path):
    events = []
    reply = worker.predict(sample_frames[:1] + [tmp_path / "missing.png"], tmp_path / "served", gradcam=True,
                           progress=events.append)
    assert (reply.message["done"], reply.message["failed"], reply.message["total"]) == (1, 1, 2)
    assert "missing.png: file not found" in reply.message["outcomes"][1]["error"]
    assert [event["done"] for event in events if "done" in event] == [1, 2]
    assert any("frames_done" in event for event in events)
    assert main(["predict", str(sample_frames[0]), str(tmp_path / "missing.png"), "--output", str(tmp_path / "cli"),
                 "--model", str(model_path), "--gradcam", "--progress", "none"]) == 1
    for name in ("bus_0012-r.seg.nrrd", "bus_0012-r_gradcam.nrrd", "bus_0012-r_overlay.png"):
        assert (tmp_path / "served" / name).is_file()

    def rows(folder: Path) -> list[dict]:
        with (folder / "results.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    assert rows(tmp_path / "served") == rows(tmp_path / "cli")


def test_bad_requests_get_error_replies_and_the_next_one_is_served(worker, tmp_path):
    with pytest.raises(RequestError, match="unknown op"):
        worker.request("explode")
    with pytest.raises(RequestError, match="not an image"):
        worker.segment(np.zeros((2, 3, 4, 5, 6), np.uint8))
    with pytest.raises(RequestError, match="needs an array named 'image'"):
        worker.request("segment")
    with pytest.raises(RequestError, match="'roi' must be"):
        worker.segment(np.zeros((40, 40), np.uint8), roi=[1, 2, 0, 5])
    with pytest.raises(RequestError, match="threshold"):
        worker.segment(np.zeros((40, 40), np.uint8), threshold=2.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RequestError, match="empty: folder holds no image files"):
        worker.predict([tmp_path / "empty"], tmp_path / "out")
    # Garbage on the wire: a line that is not JSON, and an attachment that its arrays do not fit.
    worker._send({"id": "bad", "op": "segment", "arrays": [{"name": "image", "dtype": "uint8", "shape": [99]}]},
                 {"x": np.zeros(3, np.uint8)})
    with worker._send_lock:
        worker.process.stdin.write(b'{not json\n{"id": [1], "op": "info"}\n{"op": "info"}\n')
        worker.process.stdin.flush()
    reply = worker.segment(np.full((40, 48), 7, np.uint8))
    assert reply.maps["label"].shape == (40, 48)  # answered: the worker outlived the garbage


def test_a_running_request_is_cancelled_and_the_worker_goes_on(worker):
    clip = np.random.default_rng(2).integers(0, 255, (400, 64, 64), dtype=np.uint8)
    progress, started = [], threading.Event()

    def record(event: dict) -> None:
        progress.append(event)
        started.set()
        raise RuntimeError("a progress callback that fails must not stop the client")

    pending = worker.submit("segment", {"image": clip}, record)
    assert started.wait(120)
    pending.cancel()
    with pytest.raises(RequestCancelledError):
        pending.wait(120)
    assert progress[0]["frames_done"] < progress[0]["frames_total"] == 400
    assert len(progress) < 400 // 8
    assert worker.segment(np.full((40, 48), 7, np.uint8), timeout=120).rows[0]["frame"] == 0


def test_load_swaps_the_model_between_requests_and_a_bad_model_keeps_the_old_one(model_path, random_model, tmp_path):
    other = random_model(tmp_path / "other.safetensors", 1)
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    frame = np.random.default_rng(3).integers(0, 255, (40, 60), dtype=np.uint8)
    with WorkerClient(model=model_path, threads=1) as worker:
        before = worker.segment(frame)
        with pytest.raises(RequestError, match="broken.safetensors"):
            worker.load(tmp_path / "broken.safetensors")
        assert worker.info()["name"] == "seed0"
        # Requests sent before the load finish with the old model, those after it use the new one.
        first = worker.submit("segment", {"image": frame})
        loading = worker.submit("load", model=str(other))
        second = worker.submit("segment", {"image": frame})
        assert first.wait(60).message["model"]["name"] == "seed0"
        assert loading.wait(60).message["model"]["name"] == "seed1"
        after = second.wait(60)
        assert after.message["model"]["name"] == "seed1"
        assert after.rows[0]["p_malignant"] != before.rows[0]["p_malignant"]


def test_a_worker_that_cannot_load_its_model_says_why(tmp_path):
    with pytest.raises(WorkerError, match="missing.safetensors: model file not found"):
        WorkerClient(model=tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_worker_exits_when_its_client_goes_away_even_mid_request(model_path, tmp_path):
    # A client process that starts a worker, sends a long request and is then killed outright.
    script = (
        "import sys, numpy as np\n"
        "from MFFMTCore.serving.client import WorkerClient\n"
        f"worker = WorkerClient(model={str(model_path)!r}, threads=1)\n"
        "print(worker.pid, flush=True)\n"
        "worker.submit('segment', {'image': np.zeros((2000, 64, 64), np.uint8)})\n"
        "sys.stdin.read()\n"
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker_pid = int(client.stdout.readline())
    time.sleep(1.0)
    client.send_signal(signal.SIGKILL)
    client.wait(10)
    assert wait_gone(worker_pid, 30), "the worker outlived its client"
    # And a client that closes properly gets status 0.
    worker = WorkerClient(model=model_path, threads=1)
    assert worker.close() == 0
