"""Children are stopped as a group: nothing is left running after cancel, close and scene close.

In Slicer the module's processes are started through ``PythonSlicer``, a launcher that runs the real
Python as its child; a signal that reaches only the launcher leaves that Python running (with the
model loaded). Here a launcher stand-in does the same: it starts its arguments as a child and waits,
without passing signals on. What is running is read from /proc: every process of the session the
launcher was started in (the worker client and the background commands start a new session),
zombies left to an init that does not reap them excepted.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "MFFMTCore" / "samples"

pytestmark = [pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")]

LAUNCHER = f"""#!{sys.executable}
# Like PythonSlicer: runs its arguments with the real Python as a child, passes no signal on.
import subprocess, sys
sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))
"""

# A worker that says it is ready, then neither reads its input nor stops on SIGTERM.
HUNG_WORKER = """
import signal, sys, time
from MFFMTCore.serving.protocol import write_message
signal.signal(signal.SIGTERM, signal.SIG_IGN)
write_message(sys.stdout.buffer, {"id": None, "event": "ready", "model": {}})
time.sleep(300)
"""


def running_in_session(session: int) -> list[int]:
    """The processes of a session that are still running (not zombies)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return sorted(members)


def wait_until_none_run(session: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while running_in_session(session):
        assert time.monotonic() < deadline, f"still running after the stop: {running_in_session(session)}"
        time.sleep(0.05)


@pytest.fixture
def launcher(tmp_path, monkeypatch) -> Path:
    """``PythonSlicer`` on PATH: the launcher stand-in."""
    folder = tmp_path / "bin"
    folder.mkdir()
    path = folder / "PythonSlicer"
    path.write_text(LAUNCHER, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return path


def test_closing_a_worker_that_does_not_stop_ends_the_python_under_the_launcher(launcher):
    from MFFMTCore.serving.client import WorkerClient

    client = WorkerClient(command=[str(launcher), "-c", HUNG_WORKER], start_timeout=60)
    try:
        assert len(running_in_session(client.pid)) == 2  # the launcher and the Python it started
        started = time.monotonic()
        client.close(timeout=0.5)
        wait_until_none_run(client.pid)
        assert time.monotonic() - started < 10
    finally:  # a failed check leaves no hung process behind
        for pid in running_in_session(client.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_nothing_is_left_running_after_cancel_close_and_scene_close(launcher, tmp_path, slicer_core_session):
    with slicer_core_session(tmp_path / "slicer") as (scene, slicer, _, logic):
        from MFFMTSlicerLib.slicer_presenter import MFFMTSlicerPresenter
        from test_slicer_core_module import _pictureVolume
        from test_slicer_presenter import RecordingView

        volume = _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
        logic.process(volume)
        worker = logic.worker.pid
        assert len(running_in_session(worker)) == 2  # started through the launcher

        # Cancel: a segmentation (the warm worker stays), a training stopped at once and one at a safe point.
        logic.cancel(logic.startProcessing(volume))
        assert len(running_in_session(worker)) == 2
        for hard in (True, False):
            task = logic.startTraining([SAMPLES / "samples.csv"], modelName="stopped", backbone="resnet18",
                                       epochs=50, batchSize=2, valFraction=0.4, inputSize=64)
            while task.state.status == "waiting" and not task.finished:
                task.poll()
                time.sleep(0.2)
            assert len(running_in_session(task.process.pid)) >= 2
            if hard:
                task.cancel()
            else:
                logic.cancelTraining(task)
                task.wait()
            assert task.status == "cancelled"
            wait_until_none_run(task.process.pid)

        # Scene close: live mode and a running segmentation end; only the warm worker is left, for the next scene.
        presenter = MFFMTSlicerPresenter(logic, RecordingView())
        presenter.initializeParameterNode()
        feed = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(volume).copy(),
                                              np.diag([-0.1, -0.1, 1.0, 1.0]), "Image_Reference")
        presenter.parameters.inputNode = feed
        presenter.toggleLive(record=False)
        assert logic.live is not None
        presenter.parameters.inputNode = volume
        presenter.apply()
        task = presenter.predictionTask
        presenter.sceneStartClose()
        scene.Clear(0)
        assert logic.live is None and task.status == "cancelled"
        assert len(running_in_session(worker)) == 2 and logic.worker.pid == worker

        # Close (the module is reloaded, Slicer quits): the worker and the Python under its launcher end.
        presenter.cleanup()
        wait_until_none_run(worker)
