"""The engine thread: it takes the newest pending frame of every session, batches them into one engine
call per driver kind, and hands the outputs to its finishing thread (TextureFinisher: texture pixels, watermark,
encoding), which pushes the replies to the service's main thread (inproc PUSH/PULL) while the engine runs the next
batch.

Any failure a frame causes is that frame's error reply; a failure of either thread is recorded in
``failure`` and the service (server/service.py) restarts them. Face trackers of `crop: "auto"` sessions
belong to this thread alone: made at a session's first frame, released on close and when idle.

On a landmark-driven model (server/engine.py) an image session's frames (crop "auto", which `open` insists on) become
the face mesh's 68 points over the crop, steadied by the landmarks filters and batched with the landmarks sessions'
frames; the engine draws them. ``retarget`` sessions keep their first frame's points as the driver's neutral face and
send each frame's points retargeted onto the avatar's neutral face (contract/landmark_image.py retarget_landmarks).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from client.protocol import Buffer, EncodedBuffer, ProtocolError, encode, error_frames
from contract.landmark_image import retarget_landmarks
from server import capture, drivers, imaging, provenance
from server.engine import Engine, EngineOutput
from server.manifest import AvatarNote, ManifestError, ManifestSigner
from server.sessions import FrameJob, ServerCounters, Session

log = logging.getLogger("megalive.server")

# Claimed frames a session may have waiting in the engine thread's hands (beyond the batch running): two in flight
# behind the one rendering, as a client with a window of three keeps.
MAX_HELD_PER_SESSION = 2

# Crop units between the eyes' centres below which a first frame cannot be a retarget session's neutral face (a real face
# has about 0.3): retargeting divides by it.
MIN_NEUTRAL_EYE_DISTANCE = 1e-3


@dataclass(frozen=True, kw_only=True)
class InferredBatch:
    """One engine call's frames on their way to the finishing thread."""

    prepared: list[tuple[FrameJob, np.ndarray, dict[str, Any]]]  # (job, engine input, extra reply fields) per frame
    output: EngineOutput  # the batch's rgb B×3×H×W and alpha B×1×H×W
    decode_ms: float  # per frame, of the whole claimed batch
    infer_ms: float
    began: float  # perf_counter when the engine thread took the batch


@dataclass
class RenderedFrames:
    """What the engine thread hands the finishing thread for one claimed batch: every job is in exactly one of these."""

    replies: list[tuple[bytes, list]] = field(default_factory=list)  # error replies decided while preparing or inferring
    batches: list[InferredBatch] = field(default_factory=list)  # one per driver kind that the engine ran

    def jobs(self) -> list[FrameJob]:
        return [job for batch in self.batches for job, _, _ in batch.prepared]


class TextureFinisher:
    """The finishing thread: texture pixels, watermark, encoding and sending, for one batch while the engine thread runs
    the next. On two cores a 512 px frame's watermark and 1 MiB texture otherwise wait for the engine, and it for them.
    It holds one batch at a time (``put`` waits while it is busy); replies leave in the order the engine made them, so a
    session's textures keep their order. A failure finishing a batch answers its frames with errors and is recorded in
    ``failure``: the engine thread then ends, and the supervisor restarts both."""

    def __init__(self, *, finish: Callable[[RenderedFrames], list[tuple[bytes, list]]], context: zmq.Context, endpoint: str) -> None:
        self._finish = finish
        self._context = context
        self._endpoint = endpoint
        self._work: queue.Queue[RenderedFrames | None] = queue.Queue(maxsize=1)
        self.failure: str | None = None
        self._linger_ms = 0  # set by close: how long unsent replies may wait for their peers at the end
        self._thread = threading.Thread(target=self._run, name="megalive-finish", daemon=True)
        self._thread.start()

    def put(self, rendered: RenderedFrames) -> None:
        self._work.put(rendered)

    def close(self, *, linger_ms: int) -> None:
        """Finish what was handed over (each claimed frame ends in one reply), then stop."""
        self._linger_ms = linger_ms
        self._work.put(None)
        self._thread.join()

    def _run(self) -> None:
        results = self._context.socket(zmq.PUSH)
        results.setsockopt(zmq.LINGER, 0)
        results.connect(self._endpoint)
        try:
            while (rendered := self._work.get()) is not None:
                try:
                    replies = self._finish(rendered)
                except Exception as error:  # a bug of ours: this batch's frames get errors, the supervisor restarts us
                    self.failure = f"{type(error).__name__}: {error}"
                    log.exception("finishing textures failed")
                    message = "the server failed to finish this texture; its engine is being restarted"
                    replies = list(rendered.replies) + [
                        (job.session.peer, error_frames("internal", message, request_id=job.request_id)) for job in rendered.jobs()
                    ]
                for peer, frames in replies:
                    results.send_multipart([peer, *frames], copy=False)
        finally:
            results.close(linger=self._linger_ms)


class RenderWorker:
    """The pending table (newest frame per session) and the engine thread's work. ``run()`` is the
    thread's body; a new thread may run it again after one died (the state here survives)."""

    def __init__(
        self,
        *,
        engine: Engine,
        context: zmq.Context,
        endpoint: str,
        stop: threading.Event,
        counters: ServerCounters,
        sessions: dict[int, Session],
        max_batch: int,
        max_image_pixels: int,
        crop_idle_s: float,
        watermark: bool = False,
        signer: ManifestSigner | None = None,
    ) -> None:
        self.engine = engine
        self.watermark = watermark  # every texture carries the provenance watermark (server/provenance.py)
        self.signer = signer  # `png` textures carry a C2PA manifest when the server has a signing key (server/manifest.py)
        self.counters = counters
        self.max_batch = max_batch
        self.max_image_pixels = max_image_pixels
        self.crop_idle_s = crop_idle_s
        self.failure: str | None = None  # the last exception that ended the thread
        self.pending: dict[int, FrameJob] = {}
        self.pending_cv = threading.Condition()
        self.croppers: dict[int, tuple[capture.FaceCropper, float]] = {}  # session id -> (tracker, last used)
        self.retired_sessions: collections.deque[int] = collections.deque()  # closed crop sessions (main thread appends)
        self._context = context
        self._endpoint = endpoint
        self._stop = stop
        self._sessions = sessions  # read only: a session closed while its frame waited gets no tracker

    def submit(self, job: FrameJob) -> FrameJob | None:
        """Main thread: make ``job`` its session's pending frame; returns the one it superseded (latest wins)."""
        with self.pending_cv:
            superseded = self.pending.get(job.session.session_id)
            self.pending[job.session.session_id] = job
            self.pending_cv.notify()
        return superseded

    def _signed(self, buffer: Buffer, *, avatar: int, seq: int) -> tuple[Buffer, bool]:
        """A PNG texture with a C2PA manifest naming the tool, the avatar and the digest of its consent record, and
        whether it has one (no signing key, or signing failed: the PNG as it is, and the reply says so)."""
        if self.signer is None:
            return buffer, False
        records = self.engine.avatar_records()
        record = records[avatar] if avatar < len(records) else None
        note = AvatarNote(
            id=avatar,
            name=self.engine.avatar_names[avatar],
            consent_sha256=None if record is None or record.consent is None else record.consent.sha256,
        )
        try:
            data = self.signer.sign_bytes(bytes(buffer.data), "image/png", title=f"{note.name} frame {seq}", avatars=[note])
        except ManifestError as error:
            log.error("texture left unsigned: %s", error)
            return buffer, False
        return EncodedBuffer(codec="png", data=memoryview(data)), True

    def forget(self, session: Session) -> None:
        """Main thread: a closed session's pending frame is dropped and its face tracker released."""
        with self.pending_cv:
            self.pending.pop(session.session_id, None)
            self.pending_cv.notify()  # wakes the thread, which releases the session's face tracker
        if session.crop == "auto":
            self.retired_sessions.append(session.session_id)

    def wake(self) -> None:
        with self.pending_cv:
            self.pending_cv.notify_all()

    def _tidy_croppers(self) -> None:
        """Worker thread: free the face trackers of closed sessions, and of crop sessions idle for crop_idle_s."""
        while self.retired_sessions:
            entry = self.croppers.pop(self.retired_sessions.popleft(), None)
            if entry is not None:
                entry[0].close()
        idle_before = time.monotonic() - self.crop_idle_s
        for session_id in [sid for sid, (_, used) in self.croppers.items() if used < idle_before]:
            self.croppers.pop(session_id)[0].close()

    def _close_croppers(self) -> None:
        while self.croppers:
            self.croppers.popitem()[1][0].close()

    def _claim(self, *, wait: bool, held: Sequence[FrameJob] = ()) -> list[FrameJob]:
        """Claim the pending frames (one per session, oldest first) of the sessions with fewer than MAX_HELD_PER_SESSION
        frames in ``held`` (claimed, still to run); wait for one if asked. A claimed frame is never superseded: the
        session's next frame waits behind it. Left pending while another session's frames run, it would be superseded by
        the one after, and that by the next (each dropped and sent again by a client streaming flat out), so that more
        sessions than one engine batch would cost throughput. The cap bounds what a client sending without a window can
        make the worker hold; its surplus frames supersede each other in the pending table, as any latest-wins frame."""
        while True:
            with self.pending_cv:
                if self.pending or not wait or self._stop.is_set():
                    holding = collections.Counter(job.session.session_id for job in held)
                    jobs = sorted(
                        (job for job in self.pending.values() if holding[job.session.session_id] < MAX_HELD_PER_SESSION),
                        key=lambda job: job.received_at,
                    )
                    for job in jobs:
                        del self.pending[job.session.session_id]
                    return jobs
                self.pending_cv.wait(0.1)
            self._tidy_croppers()  # outside the lock: closing a tracker must not hold up receiving

    def run(self) -> None:
        results = self._context.socket(zmq.PUSH)  # this thread's own replies: those of a batch in hand when it fails
        results.setsockopt(zmq.LINGER, 0)
        results.connect(self._endpoint)
        self._close_croppers()  # a tracker left by a worker that died may be mid-frame: start afresh
        finisher = TextureFinisher(finish=self._finish, context=self._context, endpoint=self._endpoint)
        in_hand: list[FrameJob] = []
        try:
            while not self._stop.is_set():
                if finisher.failure is not None:
                    raise RuntimeError(f"finishing textures failed: {finisher.failure}")
                self._tidy_croppers()
                in_hand = in_hand or self._claim(wait=True)
                batch = in_hand[: self.max_batch]  # the frames in hand stay listed until the finisher has them
                rendered = self._render(batch) if batch else None
                # Claim the next frames before the clients hear back: a client answered now sends a
                # new frame at once, and it must queue behind the claimed one, not supersede it.
                in_hand = in_hand + self._claim(wait=False, held=in_hand[len(batch) :])
                if rendered is not None:
                    finisher.put(rendered)  # waits while the finisher still holds the batch before
                in_hand = in_hand[len(batch) :]
        except Exception as error:  # a bug of ours: the supervisor (main thread) restarts the worker
            self.failure = f"{type(error).__name__}: {error}"
            log.exception("engine thread failed")
            for job in in_hand:  # each claimed frame still ends in exactly one reply
                results.send_multipart(
                    [
                        job.session.peer,
                        *error_frames("internal", "the engine thread failed; it is being restarted", request_id=job.request_id),
                    ],
                    copy=False,
                )
        finally:
            linger_ms = 0 if self._stop.is_set() else 1000
            finisher.close(linger_ms=linger_ms)  # what it was handed is finished and sent first
            results.close(linger=linger_ms)
            if self._stop.is_set():
                self._close_croppers()

    def _cropper_for(self, session: Session) -> capture.FaceCropper:
        """Worker thread: the session's face tracker, made at its first frame (or again after an idle release)."""
        entry = self.croppers.get(session.session_id)
        cropper = entry[0] if entry is not None else None
        if cropper is None:
            if session.session_id not in self._sessions:  # closed while its frame waited: make no tracker for it
                raise ProtocolError("unknown_session", f"session {session.session_id} was closed", request_id=None)
            assert session.crop_config is not None
            cropper = capture.FaceCropper(config=session.crop_config)
        self.croppers[session.session_id] = (cropper, time.monotonic())
        return cropper

    def _prepare(self, job: FrameJob) -> tuple[str, np.ndarray, dict[str, Any]]:
        """A job's engine kind, its engine input (one sample) and the extra reply fields; ProtocolError for a bad frame."""
        session, rid = job.session, job.request_id
        if session.driver == "arkit":
            curves = drivers.arkit_curves(job.driver, job.curve_names, request_id=rid)
            return "arkit", session.stabiliser(curves, job.signal_time_s), {}
        if session.driver == "landmarks":
            points = session.stabiliser(drivers.landmarks_68(job.driver, request_id=rid), job.signal_time_s)
            return "landmarks", self._retargeted(session, points, request_id=rid), {}
        image = imaging.decode_driver_image(job.driver, max_pixels=self.max_image_pixels, request_id=rid)
        if session.crop_config is None:
            return "image", imaging.fill_rgb(image, self.engine.resolution), {}  # another aspect is cut, not stretched
        crop_began = time.perf_counter()
        try:
            cropped = self._cropper_for(session)(np.ascontiguousarray(image), job.signal_time_s)
        except capture.NoFaceError:
            raise ProtocolError("bad_request", "no face found in the frame (crop 'auto'); nothing to reuse yet", request_id=rid) from None
        except capture.CaptureUnavailable as error:
            raise ProtocolError("bad_request", f"crop 'auto' is unavailable on this server: {error}", request_id=rid) from None
        extra: dict[str, Any] = {"face_found": cropped.face_found, "crop_ms": 1000.0 * (time.perf_counter() - crop_began)}
        if session.return_landmarks:
            extra["landmarks"] = cropped.landmarks.round(5).tolist()  # 68 [x, y] in [0, 1] over the crop
        if self.engine.landmark_driven:  # the mesh's points drive the model; the crop's pixels are not its input
            assert session.stabiliser is not None  # `open` gives image sessions of a landmark-driven model one
            points = session.stabiliser(cropped.landmarks, job.signal_time_s)
            return "landmarks", self._retargeted(session, points, request_id=rid), extra
        return "image", imaging.resize_rgb(cropped.image, self.engine.resolution), extra

    def _retargeted(self, session: Session, points: np.ndarray, *, request_id: int) -> np.ndarray:
        """A retarget session's 68 points moved onto its avatar's neutral face; the first frame's points become the
        driver's neutral. Other sessions' points as they are."""
        if not session.retarget:
            return points
        neutral = self.engine.neutral_landmarks
        assert neutral is not None  # `open` allows retarget on landmark-driven models only
        if session.driver_neutral is None:
            eyes = points[drivers.LEFT_EYE].mean(axis=0) - points[drivers.RIGHT_EYE].mean(axis=0)
            if float(np.hypot(*eyes)) < MIN_NEUTRAL_EYE_DISTANCE:
                raise ProtocolError(
                    "bad_request",
                    "retarget: the first frame's eyes coincide, so it cannot be the driver's neutral face",
                    request_id=request_id,
                )
            session.driver_neutral = points.copy()
        return retarget_landmarks(points, session.driver_neutral, neutral[session.avatar]).astype(np.float32)

    def _render(self, jobs: list[FrameJob]) -> RenderedFrames:
        """The engine thread's part: decode and batch (one engine call per driver kind), infer. Every job ends in the
        result: as an engine output to finish, or as its error reply."""
        rendered = RenderedFrames()
        began = time.perf_counter()
        by_kind: dict[str, list[tuple[FrameJob, np.ndarray, dict[str, Any]]]] = {}
        for job in jobs:
            try:
                kind, sample, extra = self._prepare(job)  # kind: an image session of a landmark-driven model sends landmarks
                by_kind.setdefault(kind, []).append((job, sample, extra))
            except Exception as error:  # any failure a frame causes is that frame's error, never the worker's end
                if isinstance(error, ProtocolError):
                    code, message = error.code, error.message
                else:
                    log.exception("preparing a frame failed")
                    code, message = "internal", f"the server could not prepare this frame: {type(error).__name__}: {error}"
                job.session.counters.bad_frames += 1
                self.counters.bad_frames += 1
                rendered.replies.append((job.session.peer, error_frames(code, message, request_id=job.request_id)))
        decode_ms = 1000.0 * (time.perf_counter() - began) / max(len(jobs), 1)
        for kind, prepared in by_kind.items():
            good = [job for job, _, _ in prepared]
            samples = [sample for _, sample, _ in prepared]
            batch = imaging.to_engine_batch(samples) if kind == "image" else np.stack(samples).astype(np.float32)
            infer_began = time.perf_counter()
            try:
                output = self.engine.run(batch, np.array([job.session.avatar for job in good], np.int64), kind=kind)
            except Exception as error:  # the engine is C++; one bad batch must not kill the worker
                log.exception("engine failed")
                for job in good:
                    job.session.counters.bad_frames += 1
                    rendered.replies.append(
                        (job.session.peer, error_frames("internal", f"engine failed: {error}", request_id=job.request_id))
                    )
                continue
            infer_ms = 1000.0 * (time.perf_counter() - infer_began)
            rendered.batches.append(InferredBatch(prepared=prepared, output=output, decode_ms=decode_ms, infer_ms=infer_ms, began=began))
        return rendered

    def _finish(self, rendered: RenderedFrames) -> list[tuple[bytes, list]]:
        """The finishing thread's part: texture pixels (one pass per batch), watermark, encoding; (peer, reply frames)
        per job, the errors first."""
        replies = list(rendered.replies)
        for inferred in rendered.batches:
            pixels = imaging.to_texture_pixels(inferred.output.rgb, inferred.output.alpha)  # B×H×W×4 uint8
            for index, (job, _, extra) in enumerate(inferred.prepared):
                session = job.session
                encode_began = time.perf_counter()
                texture = pixels[index]
                if self.watermark:
                    # On the texture as sent, at the session's size: Pillow resizes RGBA premultiplied, which wipes the
                    # mark where alpha is low, so it goes on after the resize (before it only for sizes too small to carry it).
                    if provenance.blocks_per_bit(*session.size) >= provenance.MIN_BLOCKS_PER_BIT:
                        texture = imaging.resize_rgb(texture, session.size)
                    texture = provenance.watermark_texture(texture, session.avatar)
                buffer = imaging.encode_texture(texture, output_format=session.output_format, size=session.size)
                if session.output_format == "png":
                    buffer, extra["c2pa"] = self._signed(buffer, avatar=session.avatar, seq=job.seq)
                session.counters.rendered += 1
                timings = {
                    "decode": inferred.decode_ms,
                    "crop": extra.pop("crop_ms", 0.0),
                    "infer": inferred.infer_ms,
                    "encode": 1000.0 * (time.perf_counter() - encode_began),
                    "queue": 1000.0 * (inferred.began - job.received_at),
                    "batch": len(inferred.prepared),
                }
                header = {
                    "op": "texture",
                    "id": job.request_id,
                    "session": session.session_id,
                    "seq": job.seq,
                    "t": job.client_time,
                    "timings": timings,
                    "alpha": session.output_format in ("rgba8", "png"),
                    **extra,
                }
                replies.append((session.peer, encode(header, (buffer,))))
        return replies
