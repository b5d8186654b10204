"""`mffmt live`: real OpenIGTLink over loopback, a pyigtl server sending real sample frames."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyigtl
import pytest
import SimpleITK as sitk

from MFFMTCore.cli import main
from MFFMTCore.commands.live import parse_address
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.serving.latest import LatestItems
from MFFMTCore.serving.live import LiveSegmenter, frame_image


@pytest.fixture(scope="module")
def predictor(model_path):
    return Predictor(model_path, batch_size=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def igtl_server(port: int):
    """A pyigtl server on ``port``; pyigtl installs signal handlers, which are put back afterwards."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    try:
        yield server
    finally:
        server.stop()
        for number, handler in handlers.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def running(live: LiveSegmenter):
    thread = threading.Thread(target=live.run, kwargs={"report_every": 1e9}, daemon=True)
    thread.start()
    try:
        yield live
    finally:
        live.stop()
        thread.join(10)
        assert not thread.is_alive()


@contextlib.contextmanager
def live_session(predictor: Predictor, **options):
    """A pyigtl server and a live segmenter connected to it: yields (server, segmenter)."""
    port = free_port()
    live = LiveSegmenter(predictor, "127.0.0.1", port, log=lambda _: None, **options)
    with igtl_server(port) as server, running(live):
        wait_connected(server)
        yield server, live


def wait_connected(server: pyigtl.OpenIGTLinkServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.is_connected():
        assert time.monotonic() < deadline, "the live client did not connect"
        time.sleep(0.02)


def wait_for(server, device: str, timestamp: float, timeout: float = 30.0):
    """The message of ``device`` computed from the frame with ``timestamp``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = server.wait_for_message(device, timeout=0.2)
        if message is not None and abs(message.timestamp - timestamp) < 1e-6:
            return message
    raise AssertionError(f"no {device} message for the frame of timestamp {timestamp}")


def sample_frame(path: Path) -> np.ndarray:
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return pixels if pixels.ndim == 2 else pixels[..., 0]


def frame_message(pixels: np.ndarray, timestamp: float, matrix=None, system: str = "lps", device: str = "Image_Reference"):
    return pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=matrix, world_coordinate_system=system,
                               timestamp=timestamp, device_name=device)


def oblique_matrix(spacing=(0.12, 0.08), origin=(10.0, -4.0, 30.0), angle=0.5) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # the probe tilted about the y axis
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([spacing[0], spacing[1], 1.0])
    matrix[:3, 3] = origin
    return matrix


def test_real_sample_frames_come_back_segmented_with_their_timestamp_and_geometry(predictor, sample_frames):
    with live_session(predictor) as (server, _):
        for index, path in enumerate(sample_frames):
            pixels, timestamp = sample_frame(path), 1_700_000_000.25 + index
            matrix, system = oblique_matrix(), ("ras" if index % 2 else "lps")
            server.send_message(frame_message(pixels, timestamp, matrix, system))
            result = wait_for(server, "MFFMTResult", timestamp)
            label = wait_for(server, "MFFMTLabel", timestamp)
            summary = json.loads(result.string)
            # The label map lies on the frame: same size, same matrix, same coordinate system.
            assert label.image.shape == (1, *pixels.shape) and label.image.dtype == np.uint8
            np.testing.assert_allclose(label.ijk_to_world_matrix, matrix, atol=1e-4)
            assert label.world_coordinate_system == system
            # The same answer as the predictor gives for the frame in memory.
            expected = predictor.predict(frame_image(frame_message(pixels, timestamp, matrix, system)))
            np.testing.assert_array_equal(label.image[0], expected.label[0])
            frame = expected.frames[0]
            assert summary["timestamp"] == timestamp and summary["source_device"] == "Image_Reference"
            assert summary["prediction"] == frame.prediction
            assert summary["p_malignant"] == pytest.approx(frame.p_malignant, abs=1e-6)
            assert summary["lesion_present"] == frame.lesion_present  # the model's lesion rule
            assert summary["p_lesion"] == pytest.approx(frame.p_lesion, abs=1e-6)
            assert frame.lesion_present or summary["lesion_area_px"] == 0
            # Areas are measured with the frame's own spacing (0.12 x 0.08 mm pixels).
            assert summary["lesion_area_mm2"] == pytest.approx(summary["lesion_area_px"] * 0.12 * 0.08, rel=1e-4)
            assert summary["lesion_area_px"] == int(label.image.sum())


@pytest.mark.parametrize("imaging_region", ["auto", "none"])
def test_screen_captures_and_bare_scans_in_one_stream_get_the_answers_of_their_own_regions(predictor, sample_frames,
                                                                                           imaging_region):
    """Each frame's imaging region is its own: a screen capture after a bare scan (and back) is answered
    as the predictor answers it alone (the label map and the figures of the replies); with
    ``imaging_region="none"`` every frame is taken whole, as a source of bare scans sends them."""
    scan = sample_frame(sample_frames[4])
    capture = np.zeros_like(scan)
    capture[30:, 40:-40] = scan[30:, 40:-40]  # the scan inside black screen borders
    frames = [scan, capture, capture, scan]
    with live_session(predictor, imaging_region=imaging_region) as (server, _):
        for index, pixels in enumerate(frames):
            server.send_message(frame_message(pixels, 10.0 + index))
            summary = json.loads(wait_for(server, "MFFMTResult", 10.0 + index).string)
            label = wait_for(server, "MFFMTLabel", 10.0 + index)
            expected = predictor.predict(frame_image(frame_message(pixels, 10.0 + index)), imaging_region=imaging_region)
            assert (expected.imaging_region is None) == (pixels is scan or imaging_region == "none")
            np.testing.assert_array_equal(label.image[0], expected.label[0])
            frame = expected.frames[0]
            assert (summary["p_malignant"], summary["p_lesion"], summary["lesion_area_px"]) == (
                frame.p_malignant, frame.p_lesion, frame.lesion_area_px)


@pytest.mark.parametrize("workers", [1, 2])
def test_latest_frame_wins_and_dropped_frames_are_counted(predictor, workers, sample_frames):
    frames = sample_frame(sample_frames[0])
    with live_session(predictor, workers=workers) as (server, live):
        for index in range(40):  # a burst, much faster than frames are segmented
            server.send_message(frame_message(frames, 100.0 + index), wait=False)
        summary = json.loads(wait_for(server, "MFFMTResult", 139.0).string)
        deadline = time.monotonic() + 10
        while live.segmented + live.frames.dropped + live.late < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    # Every frame is either answered or counted as dropped (waiting, or finished after a newer one
    # went out); the newest frame is always answered, and nothing is left waiting.
    dropped = live.frames.dropped + live.late
    assert live.frames.received == 40 and live.segmented + dropped == 40
    assert 0 < live.segmented < 40 and len(live.frames) == 0
    assert live._newest_sent == 39
    assert summary["frames_received"] == 40 and summary["frames_dropped"] == dropped


def test_reconnects_when_the_server_restarts(predictor, sample_frames):
    port = free_port()
    pixels = sample_frame(sample_frames[1])
    live = LiveSegmenter(predictor, "127.0.0.1", port, log=lambda _: None)
    with running(live):
        with igtl_server(port) as server:
            wait_connected(server)
            server.send_message(frame_message(pixels, 1.0))
            wait_for(server, "MFFMTResult", 1.0)
        time.sleep(0.5)  # nobody listening for a while
        with igtl_server(port) as server:
            wait_connected(server)
            server.send_message(frame_message(pixels, 2.0))
            assert "prediction" in json.loads(wait_for(server, "MFFMTResult", 2.0).string)
    # At least one new connection: a connect can also land in a closing server's backlog.
    assert live.client.connections >= 2 and live.segmented == 2


class BrokenImage(pyigtl.MessageBase):
    """An IMAGE message whose body is too short to hold an image header."""

    def __init__(self, timestamp: float):
        super().__init__(timestamp=timestamp, device_name="Image_Reference")
        self._message_type = "IMAGE"
        self._valid_message = True

    def _pack_content(self) -> bytes:
        return b"\x00\x01 not an image"


def test_malformed_zero_size_and_degenerate_frames_get_error_replies_and_the_stream_goes_on(predictor, sample_frames):
    pixels = sample_frame(sample_frames[2])
    with live_session(predictor) as (server, live):
        server.send_message(BrokenImage(1.0))
        assert "IMAGE message from 'Image_Reference'" in json.loads(server.wait_for_message("MFFMTResult", 20).string)["error"]
        cases = {
            2.0: frame_message(np.zeros((0, 0), np.uint8), 2.0),
            3.0: frame_message(np.zeros((40, 50), np.float32) + np.nan, 3.0),
            4.0: frame_message(pixels, 4.0, matrix=np.diag([0.0, 0.1, 1.0, 1.0])),
            5.0: pyigtl.ImageMessage(np.zeros((3, 40, 50), np.uint8), timestamp=5.0, device_name="Image_Reference"),
        }
        problems = {2.0: "zero-size", 3.0: "non-finite", 4.0: "degenerate geometry", 5.0: "expected one frame"}
        for timestamp, message in cases.items():
            server.send_message(message)
            summary = json.loads(wait_for(server, "MFFMTResult", timestamp).string)
            assert problems[timestamp] in summary["error"] and "prediction" not in summary
        server.send_message(frame_message(pixels, 6.0))
        assert json.loads(wait_for(server, "MFFMTResult", 6.0).string)["frames_failed"] == 5
        assert wait_for(server, "MFFMTLabel", 6.0).image.shape == (1, *pixels.shape)
    assert live.malformed == 1 and live.failed == 5 and live.segmented == 1


def test_model_swap_is_refused_unless_allowed_and_then_applies_from_the_next_frame(predictor, model_path, random_model, sample_frames, tmp_path):
    other = random_model(tmp_path / "other.safetensors", 1)
    pixels = sample_frame(sample_frames[3])
    for allowed in (False, True):
        with live_session(predictor, allow_model_swap=allowed) as (server, live):
            server.send_message(frame_message(pixels, 1.0))
            assert json.loads(wait_for(server, "MFFMTResult", 1.0).string)["model"] == "seed0"
            server.send_message(pyigtl.StringMessage(str(tmp_path / "missing.safetensors"), timestamp=2.0,
                                                     device_name="MFFMTModel"))
            error = json.loads(server.wait_for_message("MFFMTResult", 20).string)["error"]
            assert ("model not changed" in error and "missing.safetensors" in error) if allowed else "refused" in error
            server.send_message(pyigtl.StringMessage(str(other), timestamp=3.0, device_name="MFFMTModel"))
            if not allowed:
                assert "refused" in json.loads(server.wait_for_message("MFFMTResult", 20).string)["error"]
            server.send_message(frame_message(pixels, 4.0))
            summary = json.loads(wait_for(server, "MFFMTResult", 4.0).string)
            assert summary["model"] == ("seed1" if allowed else "seed0")
            assert (live.predictor is predictor) is not allowed


@pytest.mark.slow
def test_mffmt_live_command_answers_and_stops_cleanly(model_path, sample_frames):
    port = free_port()
    pixels = sample_frame(sample_frames[4])
    with igtl_server(port) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "MFFMTCore", "live", "--igtl", f"127.0.0.1:{port}", "--model", str(model_path),
             "--threads", "1", "--progress", "json", "--report-every", "1000", "--imaging-region", "none"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_connected(server, timeout=120)
            server.send_message(frame_message(pixels, 42.5))
            summary = json.loads(wait_for(server, "MFFMTResult", 42.5, timeout=60).string)
            assert summary["model"] == "seed0" and summary["frames_received"] == 1
        finally:
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    final = json.loads(stdout.strip().splitlines()[-1])
    assert final["frames_segmented"] == 1 and final["frames_received"] == 1
    assert "connected to 127.0.0.1" in stderr


def test_latest_items_keep_the_newest_and_count_the_rest():
    items = LatestItems(capacity=3)
    for number in range(10):
        items.put(number)
    assert (items.received, items.dropped, len(items)) == (10, 7, 3)
    assert [items.get(0), items.get(0), items.get(0), items.get(0.01)] == [7, 8, 9, None]
    with pytest.raises(ValueError):
        LatestItems(capacity=0)


def test_bad_address_and_device_names_are_refused(predictor, capsys):
    assert parse_address("[::1]:18944") == ("::1", 18944)
    for text in ("localhost", "localhost:0", "localhost:port", ":18944"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["live", "--igtl", "localhost"])
    assert exit_info.value.code == 2 and "HOST:PORT" in capsys.readouterr().err
    with pytest.raises(ValueError, match="20 bytes"):
        LiveSegmenter(predictor, "127.0.0.1", 1, label_device="A_label_name_too_long_for_igtl")
    with pytest.raises(ValueError, match="imaging_region"):  # a stream has no DICOM region
        LiveSegmenter(predictor, "127.0.0.1", 1, imaging_region="dicom")
    with pytest.raises(SystemExit) as exit_info:
        main(["live", "--igtl", "localhost:18944", "--imaging-region", "dicom"])
    assert exit_info.value.code == 2 and "--imaging-region" in capsys.readouterr().err
