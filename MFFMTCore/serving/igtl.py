"""An OpenIGTLink client connection that reconnects, with pyigtl's message classes on the wire.

pyigtl packs and unpacks the messages (IMAGE, STRING, ...); the transport is our own because
pyigtl's ``OpenIGTLinkClient`` (0.3.x) does not fit a live stream: it keeps only the last message
per device, so frames it replaces are lost without being counted; it sends only after 10 ms
without incoming data, so results wait (or starve) while frames keep coming; and it does not
notice a server that closed the connection, so it never reconnects to a restarted server.

Here one thread reads whole messages (header, then exactly ``body_size`` bytes) and hands each
to a callback; a message whose body cannot be unpacked is reported and skipped, the stream stays
in step. Sending is thread-safe. When the connection drops or cannot be made, the reader retries
with a growing pause (0.1 s to 2 s) until :meth:`IgtlClient.stop`.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pyigtl

from MFFMTCore.errors import MFFMTError

HEADER = struct.Struct("> H 12s 20s II Q Q")  # OpenIGTLink v1/v2 header: 58 bytes
# A body larger than this is not a frame but a stream out of step (or not OpenIGTLink at all).
MAX_BODY_BYTES = 1 << 28
DEVICE_NAME_BYTES = 20  # OpenIGTLink's limit on a device name


class MalformedMessage(MFFMTError):
    """A message with a valid header whose body cannot be read; the connection goes on.

    Args:
        message_type: the header's type (IMAGE, STRING, ...).
        device_name: the header's device name.
        problem: what is wrong.
    """

    def __init__(self, message_type: str, device_name: str, problem: str):
        super().__init__(f"{message_type} message from {device_name!r}", problem)
        self.message_type = message_type
        self.device_name = device_name


def _receive_exactly(sock: socket.socket, size: int, stopping: Callable[[], bool]) -> bytes | None:
    """``size`` bytes from ``sock``; None when the peer closed the connection or we are stopping."""
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        try:
            count = sock.recv_into(view[received:])
        except TimeoutError:
            if stopping():
                return None
            continue  # the timeout only wakes us to check for stop; keep what was read
        if count == 0:
            return None
        received += count
    return bytes(buffer)


def receive_message(sock: socket.socket, stopping: Callable[[], bool] = lambda: False) -> pyigtl.MessageBase | None:
    """Read one message; None at the end of the connection. Unknown message types are skipped.

    Raises:
        MalformedMessage: the body cannot be unpacked (the next message can still be read).
        ConnectionError: the header is not OpenIGTLink (the stream is out of step).
    """
    while True:
        header = _receive_exactly(sock, HEADER.size, stopping)
        if header is None:
            return None
        version, raw_type, raw_device, _, _, body_size, _ = HEADER.unpack(header)
        if version not in (1, 2) or body_size > MAX_BODY_BYTES:
            raise ConnectionError(f"not an OpenIGTLink header (version {version}, body of {body_size} bytes)")
        body = _receive_exactly(sock, body_size, stopping)
        if body is None:
            return None
        message_type = raw_type.decode("ascii", "replace").rstrip(" \t\r\n\0")
        device_name = raw_device.decode("utf-8", "replace").rstrip(" \t\r\n\0")
        message = pyigtl.MessageBase.create_message(message_type)
        if message is None:
            continue  # a type we have no use for (STATUS, GET_*, ...)
        try:
            message.unpack(pyigtl.MessageBase.parse_header(header), body)
        except Exception as error:  # pyigtl raises struct, numpy, key and not-implemented errors alike
            raise MalformedMessage(message_type, device_name, f"{type(error).__name__}: {error}") from error
        return message


class IgtlClient:
    """A connection to an OpenIGTLink server (PLUS, 3D Slicer's OpenIGTLinkIF, a device) that reconnects.

    Args:
        host, port: the server.
        on_message: called in the reader thread with every message received.
        on_malformed: called in the reader thread with each :class:`MalformedMessage`.
        on_connection: called with True when a connection is made and False when it is lost.
        send_timeout: seconds a send may block before the connection is given up as stuck.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[pyigtl.MessageBase], None],
        on_malformed: Callable[[MalformedMessage], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        send_timeout: float = 5.0,
    ):
        self.host, self.port = host, port
        self.on_message, self.on_malformed, self.on_connection = on_message, on_malformed, on_connection
        self.send_timeout = send_timeout
        self.connections = 0  # connections made so far (more than one: the server restarted)
        self._socket: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mffmt-igtl-reader", daemon=True)

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def start(self) -> IgtlClient:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the reader thread."""
        self._stop.set()
        self._drop_connection()
        self._thread.join(timeout)

    def send(self, *messages: pyigtl.MessageBase) -> bool:
        """Send messages back to back; False (nothing sent) when not connected or the send failed."""
        data = b"".join(message.pack() for message in messages)
        with self._send_lock:
            sock = self._socket
            if sock is None:
                return False
            try:
                sock.sendall(data)
                return True
            except OSError:
                # Part of a message may have gone out: the stream is out of step, start afresh.
                self._drop_connection()
                return False

    def _drop_connection(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
            except OSError:
                pass
            sock.close()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError:
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small STRING replies go out at once
            # A send blocked this long means a stuck peer; a read that times out just goes on
            # waiting (stop() wakes it by shutting the socket down).
            sock.settimeout(self.send_timeout)
            with self._send_lock:
                self._socket = sock
            self.connections += 1
            if self.on_connection is not None:
                self.on_connection(True)
            self._read(sock)
            with self._send_lock:
                if self._socket is sock:
                    self._drop_connection()
            if self.on_connection is not None:
                self.on_connection(False)

    def _read(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                message = receive_message(sock, self._stop.is_set)
            except MalformedMessage as error:
                if self.on_malformed is not None:
                    self.on_malformed(error)
                continue
            except (ConnectionError, OSError):
                return
            if message is None:
                return
            self.on_message(message)

