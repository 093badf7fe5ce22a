"""The ZeroMQ avatar service: a ROUTER loop, sessions, latest-wins frames, a batching worker.

Threads and sockets:

    main thread   ROUTER (clients)  <- requests;  -> replies (its own and the worker's, forwarded)
                  PAIR   (inproc)   <- the worker's finished replies
    worker thread PAIR   (inproc)   -> finished replies
                  takes the newest pending frame of every session, batches them into one engine call

ZeroMQ sockets are not thread-safe, so each socket belongs to one thread; the pending table is the
only shared state and sits behind a condition variable. Receiving never waits on the model.
"""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from server import __version__, capture, drivers, imaging
from server.engine import Engine
from server.protocol import (
    CODECS,
    CROP_MODES,
    DEFAULT_LIMITS,
    DRIVER_KINDS,
    OUTPUT_FORMATS,
    PROTOCOL_VERSION,
    Buffer,
    Limits,
    Message,
    ProtocolError,
    decode,
    encode,
    error_frames,
    raw_buffer_from_array,
    require,
    unpack_header,
)

log = logging.getLogger("megalive.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
_WORKER_ENDPOINT = "inproc://megalive-worker-{}"


class BindRefused(ValueError):
    """A bind address the service will not use (non-loopback without CURVE keys)."""


def check_bind_address(address: str) -> None:
    """Loopback, ipc and inproc only: CURVE encryption (needed for other hosts) is not built yet."""
    if address.startswith(("ipc://", "inproc://")):
        return
    if not address.startswith("tcp://"):
        raise BindRefused(f"unsupported bind address {address!r}: use tcp://127.0.0.1:PORT")
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise BindRefused(
        f"refusing to bind {address}: only loopback addresses are allowed until CURVE keys are supported "
        "(frames would travel unencrypted); use tcp://127.0.0.1:PORT"
    )


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = DEFAULT_BIND
    max_sessions: int = 64
    session_idle_s: float = 120.0  # a session with no message for this long is closed
    max_batch: int = 8
    limits: Limits = DEFAULT_LIMITS
    linger_ms: int = 0  # replies to clients that left are not worth waiting for at shutdown
    send_hwm: int = 256
    receive_hwm: int = 64


@dataclass
class SessionCounters:
    received: int = 0
    rendered: int = 0
    dropped: int = 0
    errors: int = 0  # requests refused (main thread)
    bad_frames: int = 0  # frames the worker could not decode (worker thread; kept apart so no lock is needed)


@dataclass
class Session:
    session_id: int
    peer: bytes  # ROUTER identity of the client that opened it
    avatar: int
    driver: str
    size: tuple[int, int]
    output_format: str
    crop: str
    opened_at: float
    last_seen: float
    counters: SessionCounters = field(default_factory=SessionCounters)
    # Worker-thread state (only the worker touches these after `open`):
    stabiliser: drivers.SignalStabiliser | None = None  # arkit / landmarks sessions
    cropper: capture.FaceCropper | None = None  # image sessions with crop "auto"
    return_landmarks: bool = False  # crop "auto": send the 68 landmarks found with each texture

    def as_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "avatar": self.avatar,
            "driver": self.driver,
            "size": list(self.size),
            "format": self.output_format,
            "received": self.counters.received,
            "rendered": self.counters.rendered,
            "dropped": self.counters.dropped,
            "errors": self.counters.errors + self.counters.bad_frames,
        }


@dataclass(frozen=True)
class FrameJob:
    """One driver frame waiting for the engine."""

    session: Session
    request_id: int
    seq: int
    client_time: float | None
    driver: Buffer
    frames: tuple[zmq.Frame, ...]  # keeps the zero-copy receive buffers alive
    received_at: float
    curve_names: Any = None  # an arkit frame's optional names list (checked by the worker)

    @property
    def signal_time_s(self) -> float:
        """When the capture was taken, for the One-Euro filters: the client's stamp, else arrival."""
        return self.client_time if self.client_time is not None else self.received_at


@dataclass
class ServerCounters:
    rejected: int = 0  # requests answered with an error reply (main thread)
    bad_frames: int = 0  # frames whose pixels could not be decoded (worker thread; its own counter, no lock)
    unroutable: int = 0  # replies to clients that had gone
    reaped_sessions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"rejected": self.rejected, "bad_frames": self.bad_frames, "unroutable": self.unroutable, "reaped_sessions": self.reaped_sessions}


class AvatarService:
    """Serve one engine over ZeroMQ. ``run()`` blocks until ``stop()``; ``start()`` runs it on a thread."""

    def __init__(self, *, engine: Engine, config: ServiceConfig = ServiceConfig(), context: zmq.Context | None = None) -> None:
        check_bind_address(config.bind)
        self.engine = engine
        self.config = config
        self.context = context or zmq.Context.instance()
        self.counters = ServerCounters()
        self.sessions: dict[int, Session] = {}
        self._session_ids = itertools.count(1)
        self._pending: dict[int, FrameJob] = {}
        self._pending_cv = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._endpoint = _WORKER_ENDPOINT.format(id(self))
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self.bound_address: str | None = None
        self._thumbnails = engine.thumbnails()
        self._retired_croppers: collections.deque[capture.FaceCropper] = collections.deque()  # closed by the worker
        self._can_crop = importlib.util.find_spec("mediapipe") is not None
        self._handlers = {
            "hello": self._on_hello,
            "avatars": self._on_avatars,
            "open": self._on_open,
            "close": self._on_close,
            "stats": self._on_stats,
            "enroll": self._on_enroll,
        }  # `frame` is handled first, apart: it also needs the raw frames

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Run the service on a background thread; returns the bound address once it listens."""
        self._thread = threading.Thread(target=self.run, name="megalive-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("service did not start")
        if self.bound_address is None:
            raise RuntimeError("service failed to bind")
        return self.bound_address

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._pending_cv:
            self._pending_cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the service thread ends or timeout_s passes."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        results = self.context.socket(zmq.PAIR)
        try:
            router.setsockopt(zmq.LINGER, self.config.linger_ms)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client raises instead of vanishing
            router.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes)
            router.setsockopt(zmq.SNDHWM, self.config.send_hwm)
            router.setsockopt(zmq.RCVHWM, self.config.receive_hwm)  # bounds what a flood can queue in memory
            router.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            results.setsockopt(zmq.LINGER, 0)
            results.bind(self._endpoint)
            try:
                router.bind(self.config.bind)
            except zmq.ZMQError as error:
                log.error("cannot bind %s: %s", self.config.bind, error)
                self._ready.set()
                raise
            self.bound_address = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._worker = threading.Thread(target=self._work, name="megalive-engine", daemon=True)
            self._worker.start()
            self._ready.set()
            log.info("serving %s on %s", self.engine.card.name, self.bound_address)
            self._loop(router, results)
        finally:
            self._stop.set()
            with self._pending_cv:
                self._pending_cv.notify_all()
            if self._worker is not None:
                self._worker.join(5.0)
            router.close(linger=self.config.linger_ms)
            results.close(linger=0)

    def _loop(self, router: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        next_reap = time.monotonic() + 1.0
        while not self._stop.is_set():
            ready = dict(poller.poll(100))
            if results in ready:
                # Forward everything the worker finished, without blocking.
                while True:
                    try:
                        reply = results.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._send(router, reply[0].bytes, reply[1:])
            if router in ready:
                for _ in range(256):  # bounded, so results are forwarded even under a flood
                    try:
                        message = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(router, message)
            if time.monotonic() >= next_reap:
                self._reap_idle_sessions()
                next_reap = time.monotonic() + 1.0

    # -------------------------------------------------------------------------------- replies

    def _send(self, router: zmq.Socket, peer: bytes, frames: list) -> None:
        try:
            router.send_multipart([peer, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as error:
            if error.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            # The client is gone (or not reading at all): close its sessions rather than render for nobody.
            self.counters.unroutable += 1
            if error.errno == zmq.EHOSTUNREACH:
                self._close_sessions_of(peer)

    def _reply(self, router: zmq.Socket, peer: bytes, header: dict[str, Any], buffers: tuple[Buffer, ...] = ()) -> None:
        self._send(router, peer, encode(header, buffers))

    def _error(self, router: zmq.Socket, peer: bytes, error: ProtocolError) -> None:
        self._send(router, peer, error_frames(error.code, error.message, request_id=error.request_id))

    # -------------------------------------------------------------------------------- requests

    def _handle(self, router: zmq.Socket, message: list[zmq.Frame]) -> None:
        peer = message[0].bytes
        try:
            request = decode([frame.buffer for frame in message[1:]], self.config.limits)
            if request.op == "frame":
                self._on_frame(router, peer, request, tuple(message))
                return
            handler = self._handlers.get(request.op)
            if handler is None:
                raise ProtocolError("bad_request", f"{request.op!r} is a reply, not a request", request_id=request.request_id)
            handler(router, peer, request)
        except ProtocolError as error:
            self.counters.rejected += 1
            session = self.sessions.get(_session_field(message))
            if session is not None and session.peer == peer:
                session.counters.errors += 1
            self._error(router, peer, error)

    def _on_hello(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        versions = request.get("versions", [PROTOCOL_VERSION])
        if not isinstance(versions, list) or PROTOCOL_VERSION not in versions:
            raise ProtocolError("unsupported_version", f"client speaks {versions!r}; this server speaks v{PROTOCOL_VERSION}", request_id=request.request_id)
        card = self.engine.card
        self._reply(router, peer, {
            "op": "hello",
            "id": request.request_id,
            "server": f"megalive {__version__}",
            "protocol": PROTOCOL_VERSION,
            "models": [{
                "name": card.name,
                "resolution": list(card.resolution),
                "avatars": len(card.avatar_names),
                "drivers": list(card.drivers),
                "providers": self.engine.providers,
            }],
            "capabilities": {
                "drivers": list(card.drivers),
                "formats": list(OUTPUT_FORMATS),
                "crops": ["none", "auto"] if self._can_crop else ["none"],
                "codecs": list(CODECS),
                "enroll": False,
            },
            "limits": {
                "max_buffer_bytes": self.config.limits.max_buffer_bytes,
                "max_sessions": self.config.max_sessions,
                "max_batch": self.config.max_batch,
            },
        })

    def _on_avatars(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        entries, buffers = [], []
        for index, (name, thumbnail) in enumerate(zip(self.engine.card.avatar_names, self._thumbnails)):
            entry = {"id": index, "name": name, "model": self.engine.card.name, "thumbnail": None}
            if thumbnail is not None:
                entry["thumbnail"] = {"buffer": len(buffers), "size": list(thumbnail.shape[:2])}
                buffers.append(raw_buffer_from_array(thumbnail))
            entries.append(entry)
        self._reply(router, peer, {"op": "avatars", "id": request.request_id, "avatars": entries}, tuple(buffers))

    def _on_open(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        rid = request.request_id
        avatar = require(request, "avatar", int)
        driver = request.get("driver", "image")
        output_format = request.get("format", "rgba8")
        crop = request.get("crop", "none")
        size = request.get("size", list(self.engine.resolution))
        return_landmarks = request.get("landmarks", False)
        if driver not in DRIVER_KINDS:
            raise ProtocolError("bad_request", f"driver {driver!r} not one of {list(DRIVER_KINDS)}", request_id=rid)
        if driver not in self.engine.card.drivers:
            raise ProtocolError("bad_request", f"the loaded model has no {driver!r} input (it accepts {list(self.engine.card.drivers)})", request_id=rid)
        if output_format not in OUTPUT_FORMATS:
            raise ProtocolError("bad_request", f"format {output_format!r} not one of {list(OUTPUT_FORMATS)}", request_id=rid)
        if crop not in CROP_MODES:
            raise ProtocolError("bad_request", f"crop {crop!r} not one of {list(CROP_MODES)}", request_id=rid)
        if crop == "auto" and driver != "image":
            raise ProtocolError("bad_request", f"crop 'auto' is for image drivers; {driver} frames are not pictures", request_id=rid)
        if not isinstance(return_landmarks, bool) or (return_landmarks and crop != "auto"):
            raise ProtocolError("bad_request", "landmarks: true needs crop 'auto' (the server finds them while cropping)", request_id=rid)
        filter_config = drivers.filter_config_from_request(request.get("filter"), kind=driver, request_id=rid)
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 16 <= n <= 4096 for n in size)
        ):
            raise ProtocolError("bad_request", f"size must be [height, width] between 16 and 4096, got {size!r}", request_id=rid)
        if size[0] * size[1] * 4 > self.config.limits.max_buffer_bytes:
            raise ProtocolError("too_large", f"output size {size} exceeds the buffer limit", request_id=rid)
        if not 0 <= avatar < self.engine.card.num_avatars:
            raise ProtocolError("unknown_avatar", f"avatar {avatar} does not exist (this model has {self.engine.card.num_avatars})", request_id=rid)
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError("busy", f"the server holds its maximum of {self.config.max_sessions} sessions", request_id=rid)
        cropper = None
        if crop == "auto":
            try:
                cropper = capture.FaceCropper(config=capture.CropConfig(output_size=self.engine.resolution[0], box_filter=filter_config.box))
            except capture.CaptureUnavailable as error:
                raise ProtocolError("bad_request", f"crop 'auto' is unavailable on this server: {error}", request_id=rid) from None
        now = time.monotonic()
        session = Session(
            session_id=next(self._session_ids),
            peer=peer,
            avatar=avatar,
            driver=driver,
            size=(size[0], size[1]),
            output_format=output_format,
            crop=crop,
            opened_at=now,
            last_seen=now,
            stabiliser=drivers.SignalStabiliser(kind=driver, config=filter_config) if driver != "image" else None,
            cropper=cropper,
            return_landmarks=return_landmarks,
        )
        self.sessions[session.session_id] = session
        self._reply(router, peer, {"op": "open", "id": rid, "session": session.session_id, "size": size, "format": output_format})

    def _owned_session(self, peer: bytes, request: Message) -> Session:
        session_id = require(request, "session", int)
        session = self.sessions.get(session_id)
        if session is None or session.peer != peer:
            raise ProtocolError("unknown_session", f"no session {session_id} (closed, expired, or the server restarted)", request_id=request.request_id)
        session.last_seen = time.monotonic()
        return session

    def _on_close(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        session = self._owned_session(peer, request)
        self._close_session(session)
        self._reply(router, peer, {"op": "close", "id": request.request_id, "session": session.session_id, "ok": True})

    def _on_stats(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        self._reply(router, peer, {
            "op": "stats",
            "id": request.request_id,
            "sessions": [s.as_dict() for s in self.sessions.values()],
            "engine": self.engine.counters.as_dict(),
            "server": self.counters.as_dict(),
        })

    def _on_enroll(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        raise ProtocolError("bad_request", "enroll is not supported by this server: new avatars are trained with megalive-train", request_id=request.request_id)

    def _on_frame(self, router: zmq.Socket, peer: bytes, request: Message, frames: tuple[zmq.Frame, ...]) -> None:
        session = self._owned_session(peer, request)
        seq = require(request, "seq", int)
        client_time = request.get("t")
        if len(request.buffers) != 1:
            raise ProtocolError("bad_request", "a frame carries exactly one driver buffer", request_id=request.request_id)
        session.counters.received += 1
        job = FrameJob(
            session=session,
            request_id=request.request_id,
            seq=seq,
            # A stamp that is not a finite number is ignored: the filters then use the arrival time.
            client_time=float(client_time) if isinstance(client_time, (int, float)) and math.isfinite(client_time) else None,
            driver=request.buffers[0],
            frames=frames,
            received_at=time.perf_counter(),
            curve_names=request.get("names"),
        )
        with self._pending_cv:
            superseded = self._pending.get(session.session_id)
            self._pending[session.session_id] = job
            self._pending_cv.notify()
        if superseded is not None:
            # Latest wins: the older frame will never render, so say so now instead of making the client wait.
            session.counters.dropped += 1
            self._reply(router, peer, {"op": "dropped", "id": superseded.request_id, "session": session.session_id, "seq": superseded.seq})

    # -------------------------------------------------------------------------------- sessions

    def _close_session(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        with self._pending_cv:
            self._pending.pop(session.session_id, None)
        if session.cropper is not None:
            self._retired_croppers.append(session.cropper)  # the worker may be cropping with it right now

    def _close_retired_croppers(self) -> None:
        while self._retired_croppers:
            self._retired_croppers.popleft().close()

    def _close_sessions_of(self, peer: bytes) -> None:
        for session in [s for s in self.sessions.values() if s.peer == peer]:
            self._close_session(session)

    def _reap_idle_sessions(self) -> None:
        deadline = time.monotonic() - self.config.session_idle_s
        for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
            self.counters.reaped_sessions += 1
            self._close_session(session)

    # -------------------------------------------------------------------------------- worker

    def _take_batch(self, *, wait: bool) -> list[FrameJob]:
        """Claim the oldest pending frames (one per session, at most max_batch); wait for one if asked."""
        with self._pending_cv:
            while wait and not self._pending and not self._stop.is_set():
                self._pending_cv.wait(0.1)
            jobs = sorted(self._pending.values(), key=lambda job: job.received_at)[: self.config.max_batch]
            for job in jobs:
                del self._pending[job.session.session_id]
        return jobs

    def _work(self) -> None:
        results = self.context.socket(zmq.PAIR)
        results.setsockopt(zmq.LINGER, 0)
        results.connect(self._endpoint)
        claimed: list[FrameJob] = []
        try:
            while not self._stop.is_set():
                self._close_retired_croppers()
                jobs = claimed or self._take_batch(wait=True)
                replies = self._render(jobs) if jobs else []
                # Claim the next frames before the clients hear back: a client answered now sends a
                # new frame at once, and it must queue behind the claimed one, not supersede it.
                claimed = self._take_batch(wait=False)
                for peer, frames in replies:
                    results.send_multipart([peer, *frames], copy=False)
        finally:
            results.close(linger=0)
            for session in list(self.sessions.values()):
                if session.cropper is not None:
                    self._retired_croppers.append(session.cropper)
            self._close_retired_croppers()

    def _prepare(self, job: FrameJob) -> tuple[np.ndarray, dict[str, Any]]:
        """A job's engine input (one sample) and the extra reply fields; ProtocolError for a bad frame."""
        session, rid = job.session, job.request_id
        if session.driver == "arkit":
            curves = drivers.arkit_curves(job.driver, job.curve_names, request_id=rid)
            return session.stabiliser(curves, job.signal_time_s), {}
        if session.driver == "landmarks":
            return session.stabiliser(drivers.landmarks_68(job.driver, request_id=rid), job.signal_time_s), {}
        image = imaging.decode_driver_image(job.driver, request_id=rid)
        if session.cropper is None:
            return imaging.resize_rgb(image, self.engine.resolution), {}
        crop_began = time.perf_counter()
        try:
            cropped = session.cropper(np.ascontiguousarray(image), job.signal_time_s)
        except capture.NoFaceError:
            raise ProtocolError("bad_request", "no face found in the frame (crop 'auto'); nothing to reuse yet", request_id=rid) from None
        except Exception as error:  # mediapipe is C++ underneath; one bad frame must not kill the worker
            log.exception("face crop failed")
            raise ProtocolError("internal", f"face crop failed: {error}", request_id=rid) from None
        extra: dict[str, Any] = {"face_found": cropped.face_found, "crop_ms": 1000.0 * (time.perf_counter() - crop_began)}
        if session.return_landmarks:
            extra["landmarks"] = cropped.landmarks.round(5).tolist()  # 68 [x, y] in [0, 1] over the crop
        return imaging.resize_rgb(cropped.image, self.engine.resolution), extra

    def _render(self, jobs: list[FrameJob]) -> list[tuple[bytes, list]]:
        """Decode, batch (one engine call per driver kind), infer and encode; (peer, reply frames) per job. Never raises."""
        replies: list[tuple[bytes, list]] = []
        began = time.perf_counter()
        by_kind: dict[str, list[tuple[FrameJob, np.ndarray, dict[str, Any]]]] = {}
        for job in jobs:
            try:
                sample, extra = self._prepare(job)
                by_kind.setdefault(job.session.driver, []).append((job, sample, extra))
            except ProtocolError as error:
                job.session.counters.bad_frames += 1
                self.counters.bad_frames += 1
                replies.append((job.session.peer, error_frames(error.code, error.message, request_id=job.request_id)))
        decoded = time.perf_counter()
        for kind, prepared in by_kind.items():
            replies += self._infer_and_encode(kind, prepared, began=began, decoded=decoded, batch_jobs=len(jobs))
        return replies

    def _infer_and_encode(self, kind: str, prepared: list[tuple[FrameJob, np.ndarray, dict[str, Any]]], *, began: float, decoded: float,
                          batch_jobs: int) -> list[tuple[bytes, list]]:
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
            return [(job.session.peer, error_frames("internal", f"engine failed: {error}", request_id=job.request_id)) for job in good]
        inferred = time.perf_counter()
        pixels = imaging.to_texture_pixels(output.rgb, output.alpha)  # B×H×W×4 uint8, one pass for the batch
        replies = []
        for index, (job, _, extra) in enumerate(prepared):
            session = job.session
            encode_began = time.perf_counter()
            buffer = imaging.encode_texture(pixels[index], output_format=session.output_format, size=session.size)
            session.counters.rendered += 1
            timings = {
                "decode": 1000.0 * (decoded - began) / batch_jobs,
                "crop": extra.pop("crop_ms", 0.0),
                "infer": 1000.0 * (inferred - infer_began),
                "encode": 1000.0 * (time.perf_counter() - encode_began),
                "queue": 1000.0 * (began - job.received_at),
                "batch": len(good),
            }
            header = {
                "op": "texture",
                "id": job.request_id,
                "session": session.session_id,
                "seq": job.seq,
                "t": job.client_time,
                "timings": timings,
                "alpha": session.output_format == "rgba8",
                **extra,
            }
            replies.append((session.peer, encode(header, (buffer,))))
        return replies


def _session_field(message: list[zmq.Frame]) -> int | None:
    """Best-effort session id of a message that failed validation (for per-session error counts)."""
    try:
        header = unpack_header(message[1].buffer) if len(message) > 1 else {}
    except ProtocolError:
        return None
    session = header.get("session")
    return session if isinstance(session, int) else None
