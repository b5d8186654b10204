"""Progress bars: free in a terminal, throttled where the output is a log (MFFMTCore.base.progress_bar)."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from MFFMTCore.base.progress_bar import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_the_first_and_last_bar_a_terminal_every_redraw():
    # 1.2 s of work: tqdm's own pace (a redraw every 0.1 s) would write about a dozen bars.
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        for _ in progress_bar(range(60), file=stream, desc="steps"):
            time.sleep(0.02)
    bars = [bar for bar in log.getvalue().split("\r") if "steps" in bar]
    assert len(bars) <= 3 and "60/60" in bars[-1]
    assert len([bar for bar in terminal.getvalue().split("\r") if "steps" in bar]) >= 5
    assert progress_bar(total=10, file=log).mininterval == LOG_INTERVAL_S


def test_a_training_bar_in_a_pipe_is_throttled():
    # What a cluster job or CI sees: stderr is a pipe, not a terminal.
    code = ("import time\n"
            "from MFFMTCore.training.progress import epoch_bar\n"
            "bar = epoch_bar(1, 1, 60, True)\n"
            "for _ in range(60):\n"
            "    time.sleep(0.02)\n"
            "    bar.update()\n"
            "bar.close()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 1 <= result.stderr.count("epoch 1/1") <= 3
