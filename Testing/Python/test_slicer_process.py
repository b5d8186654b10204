"""Background processes of the Slicer module (MFFMTSlicerLib.process), with real child processes."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest
from MFFMTSlicerLib.process import BackgroundProcess


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _poll_until(process: BackgroundProcess, predicate, timeout: float = 20.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines += process.read_lines()
        if predicate(lines):
            return lines
        time.sleep(0.02)
    raise AssertionError(f"timed out; output so far: {lines}")


def test_lines_arrive_while_the_process_runs_and_the_exit_status_is_kept():
    process = BackgroundProcess(_python("""
        import sys, time
        print("first", flush=True)
        time.sleep(0.3)
        print("second\\r")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """))
    process.start()
    first = _poll_until(process, lambda lines: "first" in lines)
    assert first == ["first"] and process.returncode is None  # the process is still sleeping
    assert process.wait(20) == 3
    assert process.is_finished()
    assert process.read_lines() == ["second", "to stderr"]
    assert process.read_lines() == []
    assert process.tail(2) == ["second", "to stderr"]


def test_environment_and_working_folder_reach_the_process(tmp_path):
    process = BackgroundProcess(_python("import os; print(os.environ['MFFMT_TEST'], os.getcwd())"),
                                env={**os.environ, "MFFMT_TEST": "hello"}, cwd=str(tmp_path))
    process.start()
    assert process.wait(20) == 0
    assert process.read_lines() == [f"hello {tmp_path}"]


def test_a_missing_executable_is_named():
    process = BackgroundProcess(["/nonexistent/PythonSlicer", "-m", "MFFMTCore"])
    with pytest.raises(OSError, match="/nonexistent/PythonSlicer"):
        process.start()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_terminate_lets_the_process_stop_cleanly_on_sigterm():
    process = BackgroundProcess(_python("""
        import signal, sys, time
        def stop(*_):
            print("stopping at a safe point", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """))
    process.start()
    _poll_until(process, lambda lines: "ready" in lines)
    started = time.monotonic()
    process.terminate(grace_s=10)
    assert time.monotonic() - started < 5
    assert process.wait(5) == 0 and process.read_lines() == ["stopping at a safe point"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_terminate_also_ends_the_processes_it_started():
    # Like PythonSlicer: a launcher that starts the real worker as its child, which ignores SIGTERM.
    process = BackgroundProcess(_python(f"""
        import subprocess, sys, time
        worker = subprocess.Popen([{sys.executable!r}, "-c",
                                   "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print(worker.pid, flush=True)
        worker.wait()
    """))
    process.start()
    worker_pid = int(_poll_until(process, lambda lines: bool(lines))[0])
    process.terminate(grace_s=0.5)
    assert process.returncode is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"worker {worker_pid} survived terminate()")
    assert process.wait(10) is not None and process.is_finished()
