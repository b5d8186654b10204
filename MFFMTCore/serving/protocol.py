"""The wire format between ``mffmt serve`` and its client: JSON lines with binary attachments.

Why a pipe (the worker's stdin/stdout) rather than a socket or files: the worker is the child of
one client (Slicer, a script), so the pipe needs no port, no address and no authentication (no
other user on the machine can reach it), and the worker learns that its client has gone the moment
its stdin closes, whatever way the client ended. Why attachments rather than files or shared
memory: a 480x640 frame is 300 KB, which a pipe moves in well under a millisecond; nothing is left
on disk or in ``/dev/shm`` when either side crashes, and no file system is needed to agree on.

Format: every message is one line of UTF-8 JSON (an object) ending in ``\\n``. A message carrying
arrays says so with ``"arrays": [{"name", "dtype", "shape"}, ...]`` and ``"attachment": N``; the
N bytes that follow the line are the arrays' raw C-order little-endian bytes, one after the other.
A line that is not valid JSON cannot announce an attachment, so the stream stays in step after it.

Requests carry an ``id`` chosen by the client and an ``op``; every reply carries the ``id`` of its
request and an ``event``. Each request except ``cancel`` ends with exactly one final event
(:data:`FINAL_EVENTS`); ``progress`` events may come before it. The ops and their replies are
documented in :mod:`MFFMTCore.serving.worker`.
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np

from MFFMTCore.errors import MFFMTError

PROTOCOL_VERSION = 1
# Events that end a request; any other event ("progress") is followed by more.
FINAL_EVENTS = ("ready", "info", "loaded", "result", "done", "cancelled", "error")
# A header line longer than this is refused: it is not a request but a runaway stream.
MAX_LINE_BYTES = 1 << 20
# Pixel types a frame may travel in (those of ultrasound images and of our own maps).
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class ProtocolError(MFFMTError):
    """A message that does not follow the wire format (the text says what is wrong).

    Args:
        problem: what is wrong.
        request_id: the ``id`` of the message, when it could be read.
    """

    def __init__(self, problem: str, request_id: Any = None):
        super().__init__("protocol" if request_id is None else f"request {request_id!r}", problem)
        self.request_id = request_id


def encode_arrays(arrays: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], bytes]:
    """Descriptions and concatenated bytes of ``arrays`` (name -> array) for one message."""
    descriptions, chunks = [], []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.name not in DTYPES:
            raise ProtocolError(f"array {name!r}: pixel type {array.dtype} cannot be sent (use one of {', '.join(DTYPES)})")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        descriptions.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        chunks.append(little.tobytes())
    return descriptions, b"".join(chunks)


def decode_arrays(descriptions: Any, payload: bytes) -> dict[str, np.ndarray]:
    """Arrays (name -> array, native byte order) from a message's descriptions and attachment.

    Raises:
        ProtocolError: the descriptions are malformed or do not add up to the attachment's size.
    """
    if not isinstance(descriptions, list):
        raise ProtocolError("'arrays' must be a list of {name, dtype, shape}")
    arrays, offset = {}, 0
    for description in descriptions:
        try:
            name, dtype, shape = description["name"], description["dtype"], description["shape"]
            shape = tuple(int(size) for size in shape)
        except (TypeError, KeyError, ValueError) as error:
            raise ProtocolError(f"array description {description!r} needs name, dtype and shape") from error
        if dtype not in DTYPES or any(size < 0 for size in shape):
            raise ProtocolError(f"array {name!r}: unsupported dtype {dtype!r} or negative size in {list(shape)}")
        little = np.dtype(dtype).newbyteorder("<")
        size = int(np.prod(shape, dtype=np.int64)) * little.itemsize
        if offset + size > len(payload):
            raise ProtocolError(f"array {name!r} of shape {list(shape)} needs more bytes than the attachment holds")
        arrays[name] = np.frombuffer(payload, little, count=size // little.itemsize, offset=offset).reshape(shape)
        arrays[name] = arrays[name].astype(np.dtype(dtype), copy=False)
        offset += size
    if offset != len(payload):
        raise ProtocolError(f"attachment holds {len(payload)} bytes, the arrays {offset}")
    return arrays


def write_message(stream: IO[bytes], message: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write one message (and its arrays as attachment) to a binary stream and flush it.

    Raises:
        ValueError: the message holds a value JSON cannot represent (NaN, infinity, objects).
    """
    payload = b""
    if arrays:
        message = dict(message)
        message["arrays"], payload = encode_arrays(arrays)
        message["attachment"] = len(payload)
    line = json.dumps(message, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"
    stream.write(line)
    if payload:
        stream.write(payload)
    stream.flush()


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read one message and its arrays; None at the end of the stream.

    Raises:
        ProtocolError: the line is not a JSON object, or its attachment is malformed. The stream
            stays usable for the next message, except when the attachment was cut short.
    """
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES:
        # Skip the rest of the runaway line so that the next message is read from its start.
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE_BYTES)
        raise ProtocolError(f"message line longer than {MAX_LINE_BYTES} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"message is not JSON: {error}") from error
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    request_id = message.get("id")
    size = message.get("attachment", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"'attachment' must be a byte count, got {size!r}", request_id)
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        raise ProtocolError(f"attachment cut short: {len(payload)} of {size} bytes", request_id)
    # The attachment was consumed whatever its descriptions say: a bad one spoils this message only.
    try:
        return message, decode_arrays(message.get("arrays", []), payload)
    except ProtocolError as error:
        raise ProtocolError(str(error), request_id) from error
