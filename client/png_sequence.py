"""A PNG sequence written beside a live loop: ``frame_000041.png`` per texture, numbered by the texture's seq.

Each file is written as ``frame_NNNNNN.png.partial`` and renamed into place when complete, so a reader (a
compositor watching the folder, an image-sequence import) never sees half a PNG and a killed writer leaves
no truncated frame under a final name. Encoding happens on a thread of its own (Pillow's encoder releases the
GIL); the loop hands frames over without waiting unless it asks to (``block=True``: a viewer that saves every
frame it shows). A frame the writer cannot take is counted, never queued without bound: a gap in the numbers
is a texture that was not written.

A folder that already holds a sequence is refused: a new recording never overwrites an earlier one.
Needs Pillow (a runtime dependency); not shipped to the hosts.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

FRAME_PATTERN = "frame_*.png"
# Frames waiting to be encoded: about a second of hiccup (a busy disk, a starved thread) at 30 frames/s;
# at 512×512 RGBA 32 MB at most.
DEFAULT_MAX_QUEUED = 32
_MODES = {3: "RGB", 4: "RGBA"}


class SequenceFolderError(ValueError):
    """The folder cannot take a new sequence; the text says why in one line."""


def frame_name(seq: int) -> str:
    return f"frame_{seq:06d}.png"


@dataclass(frozen=True)
class _Job:
    seq: int
    pixels: memoryview | bytes
    width: int
    height: int
    channels: int


class PngSequenceWriter:
    """Writes submitted frames as PNG files on a background thread; ``close()`` finishes the queued ones."""

    def __init__(self, *, directory: Path, max_queued: int = DEFAULT_MAX_QUEUED, compress_level: int = 1) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            existing = next(self.directory.glob(FRAME_PATTERN), None)
        except OSError as error:
            raise SequenceFolderError(f"cannot write PNGs to {self.directory}: {error.strerror or error}") from None
        if existing is not None:
            raise SequenceFolderError(f"{self.directory} already holds a PNG sequence ({existing.name}); choose an empty folder")
        if not os.access(self.directory, os.W_OK):
            raise SequenceFolderError(f"cannot write PNGs to {self.directory}: permission denied")
        self.compress_level = compress_level
        self.written = 0  # counted by the writer thread
        self.failed = 0  # counted by the writer thread: the frame that failed and any queued after it
        self.dropped = 0  # counted by the submitting thread: no room in the queue, or submitted after a failure or close
        self.failure: str | None = None  # one line: the write error that stopped the writer
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="megalive-png-sequence", daemon=True)
        self._thread.start()

    def submit(self, *, seq: int, pixels: memoryview | bytes, width: int, height: int, channels: int, block: bool = False) -> bool:
        """Queue one frame (rows of width*channels bytes, top to bottom); False when it will not be written.

        ``pixels`` must not change until it is written (a received texture's bytes never do)."""
        if channels not in _MODES:
            raise ValueError(f"channels must be 3 or 4, got {channels}")
        if len(pixels) != width * height * channels:
            raise ValueError(f"{len(pixels)} bytes do not make {height} rows of {width}×{channels}")
        if self._closed or self.failure is not None:
            self.dropped += 1
            return False
        job = _Job(seq=seq, pixels=pixels, width=width, height=height, channels=channels)
        try:
            self._jobs.put(job, block=block)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    @property
    def not_written(self) -> int:
        return self.failed + self.dropped

    def _write(self, job: _Job) -> None:
        from PIL import Image

        image = Image.frombuffer(_MODES[job.channels], (job.width, job.height), job.pixels, "raw", _MODES[job.channels], 0, 1)
        final = self.directory / frame_name(job.seq)
        partial = final.with_name(final.name + ".partial")
        with open(partial, "wb") as file:
            image.save(file, format="PNG", compress_level=self.compress_level)
        os.replace(partial, final)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self.failure is not None:
                self.failed += 1
                continue
            try:
                self._write(job)
            except OSError as error:  # disk full, folder removed: stop writing, say so once through `failure`
                self.failure = f"writing {frame_name(job.seq)} to {self.directory} failed: {error.strerror or error}"
                self.failed += 1
                continue
            self.written += 1

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (waiting at most ``timeout_s``) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._jobs.put(None, timeout=timeout_s)  # behind the queued frames: the thread writes them, then stops
        except queue.Full:
            return  # the thread is stuck on a write (a hung file system); it is a daemon and will not hold the exit
        self._thread.join(timeout_s)
