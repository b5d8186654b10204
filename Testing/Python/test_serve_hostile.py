"""`mffmt serve` under hostile messages (issue 21): every bad message gets a one-line error reply, the
worker goes on with the next request, and exits promptly once its input closes, whatever came before."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from MFFMTCore.serving.protocol import ProtocolError, max_attachment_bytes, read_message, write_message
from MFFMTCore.serving.worker import Worker

NESTED = b'{"id":1,"op":"info","x":' + b"[" * 100000 + b"]" * 100000 + b"}\n"


def shape_message(request_id, shape, attachment: int = 0) -> bytes:
    header = {"id": request_id, "op": "segment", "arrays": [{"name": "image", "dtype": "uint8", "shape": shape}],
              "attachment": attachment}
    return json.dumps(header).encode() + b"\n" + b"\0" * attachment


@pytest.mark.parametrize("line, match", [
    (NESTED, "nested deeper"),
    (b'{"id": 1e400, "op": "info"}\n', "out of range"),
    (b'{"id": ' + b"9" * 5000 + b', "op": "info"}\n', "not JSON"),
    (b'{"id": NaN, "op": "info"}\n', "not JSON"),
    (shape_message(3, [2**70, 1]), "needs more bytes"),
    (shape_message(4, [2**62, 4], 4), "needs more bytes"),
    (shape_message(5, [2, "3"]), "whole numbers"),
    (shape_message(6, [1] * 9), "shape"),
])
def test_a_bad_header_is_a_protocol_error_and_the_next_message_is_read(line, match):
    stream = io.BytesIO(line + b'{"id": 9, "op": "info"}\n')
    with pytest.raises(ProtocolError, match=match):
        read_message(stream)
    assert read_message(stream)[0] == {"id": 9, "op": "info"}


def test_an_attachment_over_the_limit_is_refused_without_being_held():
    # 10**12 announced, a few bytes sent: refused at once (reading it would need a terabyte).
    stream = io.BytesIO(b'{"id": 1, "op": "segment", "attachment": 1000000000000}\nabc')
    with pytest.raises(ProtocolError, match=f"over the {max_attachment_bytes()}-byte limit") as error:
        read_message(stream)
    assert error.value.request_id == 1
    assert read_message(stream) is None


class _Failing(io.RawIOBase):
    """A reader whose every read fails as a reader thread's can (out of memory)."""

    closed = False

    def readline(self, size: int = -1) -> bytes:
        raise MemoryError


def test_a_reader_that_keeps_failing_ends_the_queue_so_the_worker_exits():
    replies = io.BytesIO()
    worker = Worker(_Failing(), replies)
    worker._read_requests()
    assert worker._requests.get(timeout=1) is None
    errors = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert errors and all(reply["event"] == "error" and "MemoryError" in reply["error"] for reply in errors)


@pytest.mark.slow
def test_serve_answers_every_bad_message_and_exits_within_5_s_of_its_input_closing(model_path):
    worker = subprocess.Popen([sys.executable, "-m", "MFFMTCore", "serve", "--model", str(model_path), "--threads", "1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready = json.loads(worker.stdout.readline())
    assert ready["event"] == "ready"
    bad = [NESTED, b'{"id": 1e400, "op": "info"}\n', shape_message(3, [2**70, 1]), shape_message(4, [2**62, 4], 4)]
    for line in bad:
        worker.stdin.write(line)
    write_message(worker.stdin, {"id": "after", "op": "info"})
    replies = [json.loads(worker.stdout.readline()) for _ in range(5)]  # served after all that garbage
    # Last, an attachment announced far over the limit and never sent in full.
    worker.stdin.write(b'{"id": "huge", "op": "segment", "attachment": 1000000000000}\n' + b"\0" * 1000)
    worker.stdin.close()
    closed = time.monotonic()
    try:
        status = worker.wait(timeout=5)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker did not exit within 5 s of its input closing")
    assert time.monotonic() - closed < 5 and status == 0
    replies += [json.loads(line) for line in worker.stdout.read().splitlines()]
    assert [reply["event"] for reply in replies] == ["error"] * 4 + ["info", "error"]
    assert [reply["id"] for reply in replies] == [None, None, 3, 4, "after", "huge"]
    assert all("\n" not in reply.get("error", "") for reply in replies)
    np.testing.assert_equal(replies[4]["protocol"], 1)
