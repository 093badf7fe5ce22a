"""Live Link Face UDP receiver: non-blocking, bounded work per poll, the newest frame per subject.

Standard library only (plus the packet codec beside it): it runs in the standalone relay and inside
Unreal's embedded Python (the editor's ``arkit`` driver).

* Loopback by default (``DEFAULT_BIND_ADDRESS``): a receiver on every interface takes packets from
  anyone on the network, so a phone on the LAN needs ``0.0.0.0`` or the LAN address, given explicitly.
* One receiver per port: the socket is bound without ``SO_REUSEADDR``/``SO_REUSEPORT``, and a port
  another socket holds raises :class:`PortInUseError` at once instead of silently sharing it.
"""

from __future__ import annotations

import errno
import socket
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .packet import MAX_DATAGRAM, FaceFrame, PacketError, parse_packet

__all__ = [
    "DEFAULT_BIND_ADDRESS",
    "DEFAULT_PORT",
    "LiveLinkFaceReceiver",
    "PortInUseError",
    "ReceiverStats",
]

DEFAULT_PORT = 11111
# Loopback unless asked: a receiver on every interface takes packets from anyone on the network.
# A phone on the LAN needs the LAN address or 0.0.0.0, given explicitly.
DEFAULT_BIND_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class ReceiverStats:
    """Counters of a LiveLinkFaceReceiver since it was created."""

    received: int  # datagrams read from the socket (good and malformed)
    accepted: int  # parsed and stored as the newest frame of their subject
    malformed: int  # failed to parse
    malformed_by_reason: Mapping[str, int]  # PacketError.reason -> count (read-only)
    dropped_subjects: int  # good packets dropped because the subject table was full
    subjects: int  # subjects currently held


class PortInUseError(OSError):
    """The UDP port is already bound by another receiver (a second relay, the editor, the app)."""

    def __init__(self, *, address: str, port: int) -> None:
        super().__init__(
            f"UDP port {port} is already in use on {address} (another relay, the editor bridge, or Unreal's own Live Link source?)"
        )
        self.errno = errno.EADDRINUSE
        self.address = address
        self.port = port


def _is_address_in_use(error: OSError) -> bool:
    # Windows reports WSAEADDRINUSE (10048) in winerror; errno may hold either value.
    return error.errno in (errno.EADDRINUSE, 10048) or getattr(error, "winerror", None) == 10048


class LiveLinkFaceReceiver:
    """Non-blocking Live Link Face UDP receiver that keeps the newest frame per subject.

    Call ``poll()`` from any loop (an editor tick, a relay loop); it reads at most
    ``max_packets_per_poll`` datagrams and never blocks, so a flood costs bounded work per call.
    "Newest" means last to arrive: Live Link frame numbers are timecode-based and restart with
    the app, so arrival order is the robust choice (loopback and LANs do not reorder in practice).
    """

    def __init__(
        self,
        *,
        bind_address: str = DEFAULT_BIND_ADDRESS,
        port: int = DEFAULT_PORT,
        max_packets_per_poll: int = 1024,
        max_subjects: int = 64,
        receive_buffer_bytes: int = 1 << 20,
        on_datagram: Callable[[bytes], object] | None = None,
    ) -> None:
        """Bind a UDP socket (``port=0`` picks a free port; read it back from ``.port``).

        Binds loopback by default; pass ``bind_address="0.0.0.0"`` (or a LAN address) for a phone.
        A port another socket holds raises :class:`PortInUseError` instead of sharing it.

        ``max_subjects`` bounds the subject table: packets from further subjects are dropped and
        counted. ``on_datagram`` sees every raw datagram, good or malformed, before parsing (e.g.
        ``TakeWriter.write`` to record a take); its own exceptions are not swallowed.
        """
        if max_packets_per_poll < 1:
            raise ValueError("max_packets_per_poll must be >= 1")
        if max_subjects < 1:
            raise ValueError("max_subjects must be >= 1")
        self.max_packets_per_poll = max_packets_per_poll
        self.max_subjects = max_subjects
        self.on_datagram = on_datagram
        family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR / SO_REUSEPORT: on UDP they let a second receiver bind the same port
            # and one of the two then silently gets nothing. UDP has no TIME_WAIT, so a restarted
            # relay rebinds at once without them. Windows lets a SO_REUSEADDR socket steal a port
            # unless the holder claims it exclusively.
            if sys.platform == "win32" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            # A modest buffer absorbs bursts between polls (a phone sends ~60 x 300 B/s).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            sock.bind((bind_address, port))
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            if _is_address_in_use(error):
                raise PortInUseError(address=bind_address, port=port) from error
            raise
        self._socket: socket.socket | None = sock
        self.bind_address: str = bind_address
        self.port: int = sock.getsockname()[1]
        self._buffer = bytearray(MAX_DATAGRAM)
        self._frames: dict[str, FaceFrame] = {}
        self._newest: FaceFrame | None = None
        self._received = 0
        self._accepted = 0
        self._malformed_by_reason: dict[str, int] = {}
        self._dropped_subjects = 0

    # -- reading -------------------------------------------------------------------------------

    def poll(self) -> int:
        """Drain up to max_packets_per_poll datagrams without blocking; return how many were read.

        Malformed packets are counted and skipped, never raised. Returns 0 once closed.
        """
        sock = self._socket
        if sock is None:
            return 0
        buffer = self._buffer
        view = memoryview(buffer)
        processed = 0
        while processed < self.max_packets_per_poll:
            try:
                size = sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                break  # EAGAIN / EWOULDBLOCK: nothing more queued right now
            except ConnectionResetError:
                # Windows reports an earlier ICMP port-unreachable on the next recv; harmless.
                processed += 1  # still counts as work, so the loop stays bounded
                continue
            processed += 1
            self._received += 1
            datagram = view[:size]
            if self.on_datagram is not None:
                self.on_datagram(bytes(datagram))
            try:
                frame = parse_packet(datagram)
            except PacketError as error:
                counts = self._malformed_by_reason
                counts[error.reason] = counts.get(error.reason, 0) + 1
                continue
            self._store(frame)
        return processed

    def _store(self, frame: FaceFrame) -> None:
        frames = self._frames
        if frame.subject not in frames and len(frames) >= self.max_subjects:
            self._dropped_subjects += 1
            return
        frames[frame.subject] = frame
        self._newest = frame
        self._accepted += 1

    # -- queries -------------------------------------------------------------------------------

    def latest(self, subject: str | None = None) -> FaceFrame | None:
        """Newest frame of ``subject``, or the newest frame of any subject when None."""
        if subject is None:
            return self._newest
        return self._frames.get(subject)

    def subjects(self) -> tuple[str, ...]:
        """Subjects held, in the order first seen."""
        return tuple(self._frames)

    def forget(self, subject: str) -> None:
        """Drop a subject's frame, freeing its slot in the table."""
        frame = self._frames.pop(subject, None)
        if frame is not None and frame is self._newest:
            self._newest = None

    def clear(self) -> None:
        """Drop every held frame (counters are kept)."""
        self._frames.clear()
        self._newest = None

    def stats(self) -> ReceiverStats:
        by_reason = dict(self._malformed_by_reason)
        return ReceiverStats(
            received=self._received,
            accepted=self._accepted,
            malformed=sum(by_reason.values()),
            malformed_by_reason=types.MappingProxyType(by_reason),
            dropped_subjects=self._dropped_subjects,
            subjects=len(self._frames),
        )

    def fileno(self) -> int:
        """The socket's descriptor, for selectors; -1 once closed."""
        return -1 if self._socket is None else self._socket.fileno()

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._socket is None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> LiveLinkFaceReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
