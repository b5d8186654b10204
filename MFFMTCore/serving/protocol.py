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
import math
from typing import IO, Any

import numpy as np

from MFFMTCore.base.jsonsafe import loads_strict
from MFFMTCore.base.pixel_budget import input_byte_budget
from MFFMTCore.errors import MFFMTError

PROTOCOL_VERSION = 1
# Events that end a request; any other event ("progress") is followed by more.
FINAL_EVENTS = ("ready", "info", "loaded", "result", "done", "cancelled", "error")
# A header line longer than this is refused: it is not a request but a runaway stream.
MAX_LINE_BYTES = 1 << 20
# Deepest nesting of a header's JSON (requests nest three levels); deeper is refused, never recursed into.
MAX_JSON_DEPTH = 32
# Largest attachment: the pixel budget of one input (MFFMTCore.base.pixel_budget, 1 GiB by
# default: a 1024-frame 1024x1024 grey clip) and 1 MiB for the messages around it; anything
# bigger is refused before a byte of it is held in memory.
MAX_ATTACHMENT_EXTRA = 1 << 20
MAX_ARRAY_DIMENSIONS = 8
# Attachments are read in chunks of this size, so that a short one costs only what arrived.
_CHUNK_BYTES = 1 << 24
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
            if not isinstance(shape, list) or not all(type(size) is int for size in shape):
                raise TypeError(shape)
            shape = tuple(shape)
        except (TypeError, KeyError) as error:
            raise ProtocolError(f"array description {str(description)[:200]} needs name, dtype and shape "
                                "(a list of whole numbers)") from error
        if dtype not in DTYPES or not 1 <= len(shape) <= MAX_ARRAY_DIMENSIONS or any(size < 0 for size in shape):
            raise ProtocolError(f"array {name!r}: unsupported dtype {dtype!r}, or a shape that is not 1 to "
                                f"{MAX_ARRAY_DIMENSIONS} sizes of at least 0 ({str(list(shape))[:100]})")
        little = np.dtype(dtype).newbyteorder("<")
        # Python integers: a product of huge sizes neither overflows nor wraps to 0 as int64 would.
        size = math.prod(shape) * little.itemsize
        if offset + size > len(payload):
            raise ProtocolError(f"array {name!r} of shape {str(list(shape))[:100]} needs more bytes than the attachment holds")
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


def max_attachment_bytes() -> int:
    """The largest attachment read: one input's pixel budget and a little more."""
    return input_byte_budget() + MAX_ATTACHMENT_EXTRA


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (1 for a flat object), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # deeper: already too deep, no need to look further
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def parse_header(line: bytes) -> dict[str, Any]:
    """The JSON object of one message line: strict JSON, finite numbers, at most MAX_JSON_DEPTH deep.

    Raises:
        ProtocolError: anything else (including a line nested so deep that parsing it would recurse
            without end, and numbers Python cannot hold).
    """
    try:
        message = loads_strict(line, parse_float=_finite_float)
    except RecursionError as error:
        raise ProtocolError(f"message is nested deeper than {MAX_JSON_DEPTH} levels") from error
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError, and numbers out of range
        raise ProtocolError(f"message is not JSON: {str(error)[:200]}") from error
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    if _depth(message) > MAX_JSON_DEPTH:
        raise ProtocolError(f"message is nested deeper than {MAX_JSON_DEPTH} levels")
    return message


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes, read in chunks: memory grows with what arrives, not with what was announced."""
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, _CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read one message and its arrays; None at the end of the stream.

    Every size is bounded before anything is held: the line (:data:`MAX_LINE_BYTES`), its JSON
    depth (:data:`MAX_JSON_DEPTH`), the attachment (:func:`max_attachment_bytes`) and each array's
    shape.

    Raises:
        ProtocolError: the line is not a JSON object, or its attachment is malformed or too big. The
            stream stays usable for the next message, except when the attachment was cut short.
    """
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES:
        # Skip the rest of the runaway line so that the next message is read from its start.
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE_BYTES)
        raise ProtocolError(f"message line longer than {MAX_LINE_BYTES} bytes")
    message = parse_header(line)
    request_id = message.get("id")
    size = message.get("attachment", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"'attachment' must be a byte count, got {str(size)[:40]}", request_id)
    limit = max_attachment_bytes()
    if size > limit:
        # Read past it, a chunk at a time and keeping nothing, so that the stream stays in step.
        while size and (chunk := stream.read(min(size, _CHUNK_BYTES))):
            size -= len(chunk)
        raise ProtocolError(f"attachment of {message['attachment']} bytes is over the {limit}-byte limit "
                            "(MFFMT_MAX_INPUT_BYTES)", request_id)
    payload = _read_exactly(stream, size) if size else b""
    if len(payload) != size:
        raise ProtocolError(f"attachment cut short: {len(payload)} of {size} bytes", request_id)
    # The attachment was consumed whatever its descriptions say: a bad one spoils this message only.
    try:
        return message, decode_arrays(message.get("arrays", []), payload)
    except ProtocolError as error:
        raise ProtocolError(str(error), request_id) from error
