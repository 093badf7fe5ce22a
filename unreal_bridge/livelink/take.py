"""Live Link Face takes: record received packets to a file (:class:`TakeWriter`, size-capped), read and replay them.

Standard library only (plus the packet codec's datagram size): it runs in the standalone relay and
inside Unreal's embedded Python.

Take file format (``megalive livelink replay FILE``)
----------------------------------------------------
``b"MEGALIVE-LLF-TAKE 1\\n"`` followed by records, each: f64 receive time in seconds since the
recording started, u32 packet length, then the raw packet bytes (all big-endian). Records are
appended as they arrive, so the file can be written incrementally; :class:`TakeWriter` writes to
``NAME.partial`` and renames it to ``NAME`` only when closed cleanly. A take is capped in size
(``DEFAULT_TAKE_MAX_BYTES`` unless told otherwise): a UDP flood must not fill the disk.

Decisions
---------
* Take files tolerate a truncated *final* record (a crashed recording still replays everything
  it completed); pass ``strict=True`` to :func:`read_take` to make that an error instead. A bad
  magic line or a corrupt record (absurd length, non-finite time) always raises ``ValueError``.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .packet import MAX_DATAGRAM

__all__ = [
    "DEFAULT_TAKE_MAX_BYTES",
    "TAKE_MAGIC",
    "TakeWriter",
    "read_take",
    "replay_take",
]

TAKE_MAGIC = b"MEGALIVE-LLF-TAKE 1\n"
_RECORD_HEADER = struct.Struct(">dI")  # receive time (s since start), packet length
# A phone sends ~60 x 320 B/s of records (about 70 MB an hour); a flood fills this in seconds, not the disk.
DEFAULT_TAKE_MAX_BYTES = 256_000_000


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class TakeWriter:
    """Appends received packets to a take file of at most ``max_bytes`` bytes.

    Records go to ``NAME.partial`` as they arrive (flushed per record, so a crash loses at most
    the record being written); ``close()`` fsyncs and renames it to ``NAME``. Leaving a ``with``
    block by an exception keeps the ``.partial`` file, which :func:`read_take` can still replay.
    An existing ``NAME.partial`` (an earlier interrupted take) is never overwritten: opening
    raises FileExistsError. Once a record would take the file past ``max_bytes``, ``write()``
    returns False for it and every later packet (``full`` is set, ``refused`` counts them); the
    take stays a complete prefix of what arrived.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_TAKE_MAX_BYTES,
    ) -> None:
        if max_bytes < len(TAKE_MAGIC):
            raise ValueError(f"max_bytes must be at least {len(TAKE_MAGIC)} (the take header)")
        self.path = Path(path)
        self.partial_path = _partial_path(self.path)
        self.max_bytes = max_bytes
        self._clock = clock
        try:
            # "x": never truncate what an interrupted recording left behind.
            self._file: BinaryIO | None = open(self.partial_path, "xb")
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                "an interrupted take is there; replay, rename or delete it first",
                os.fspath(self.partial_path),
            ) from None
        self._file.write(TAKE_MAGIC)
        self._file.flush()
        self._start = clock()
        self.records = 0
        self.bytes_written = len(TAKE_MAGIC)
        self.full = False  # the cap was reached: nothing more is written
        self.refused = 0  # packets not written because of the cap

    def write(self, packet: bytes, received_at: float | None = None) -> bool:
        """Append one packet; ``received_at`` is seconds since start (default: the clock).

        Returns False (and writes nothing) once the take has reached ``max_bytes``.
        """
        if self._file is None:
            raise ValueError("take writer is closed")
        if len(packet) > MAX_DATAGRAM:
            raise ValueError(f"packet of {len(packet)} bytes is larger than a UDP datagram")
        at = self._clock() - self._start if received_at is None else float(received_at)
        if not math.isfinite(at):
            raise ValueError(f"receive time {at} is not finite")
        size = _RECORD_HEADER.size + len(packet)
        if self.full or self.bytes_written + size > self.max_bytes:
            self.full = True  # later, smaller packets are refused too: no gaps inside a take
            self.refused += 1
            return False
        self._file.write(_RECORD_HEADER.pack(at, len(packet)) + bytes(packet))
        self._file.flush()
        self.records += 1
        self.bytes_written += size
        return True

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> Path:
        """Finish the take: fsync, rename NAME.partial -> NAME; returns the final path."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()
            os.replace(self.partial_path, self.path)
        return self.path

    def abandon(self) -> None:
        """Stop writing and leave the take as NAME.partial (what an interrupted recording is)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def discard(self) -> None:
        """Stop writing and delete NAME.partial: for a take that never got going (no session)."""
        if self._file is not None:
            self.abandon()
            self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> TakeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def read_take(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[tuple[float, bytes]]:
    """Yield (seconds since start, packet bytes) from a take file, in file order.

    Raises ValueError on a bad magic line or a corrupt record. A truncated final record (a
    crashed recording) ends the take quietly, unless ``strict`` is set.
    """
    with open(path, "rb") as file:
        magic = file.read(len(TAKE_MAGIC))
        if magic != TAKE_MAGIC:
            raise ValueError(f"{os.fspath(path)!r} is not a MegaLive Live Link take (bad magic)")
        index = 0
        while True:
            header = file.read(_RECORD_HEADER.size)
            if not header:
                return
            if len(header) < _RECORD_HEADER.size:
                if strict:
                    raise ValueError(f"take truncated inside the header of record {index}")
                return
            at, length = _RECORD_HEADER.unpack(header)
            if length > MAX_DATAGRAM or not math.isfinite(at):
                raise ValueError(f"take record {index} is corrupt (time {at}, length {length})")
            packet = file.read(length)
            if len(packet) < length:
                if strict:
                    raise ValueError(f"take truncated inside the packet of record {index}")
                return
            yield at, packet
            index += 1


def _udp_sender(address: tuple[str, int]) -> tuple[Callable[[bytes], object], socket.socket]:
    host, port = address
    family, _, _, _, resolved = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    return (lambda packet: sock.sendto(packet, resolved)), sock


def replay_take(
    path: str | os.PathLike[str],
    *,
    address: tuple[str, int],
    speed: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    send: Callable[[bytes], object] | None = None,
) -> int:
    """Send a take's packets to ``address`` over UDP at their recorded timing; return the count.

    ``speed`` scales time (2.0 = twice as fast, ``math.inf`` = no waiting). Timing follows an
    absolute schedule from ``clock`` so send overhead never accumulates as drift; inject ``sleep``
    and ``clock`` together in tests (a fake sleep that advances a fake clock). ``send`` replaces
    the UDP socket (it receives each packet's bytes).
    """
    if not speed > 0:  # also rejects NaN
        raise ValueError(f"speed must be > 0, got {speed}")
    sock: socket.socket | None = None
    if send is None:
        send, sock = _udp_sender(address)
    try:
        sent = 0
        start = clock()
        for at, packet in read_take(path):
            delay = start + at / speed - clock()
            if delay > 0:
                sleep(delay)
            send(packet)
            sent += 1
        return sent
    finally:
        if sock is not None:
            sock.close()
