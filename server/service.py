"""The ZeroMQ avatar service: a ROUTER loop, sessions, latest-wins frames, a supervised batching worker.

Threads and sockets:

    main thread   ROUTER  (clients)   <- requests, read frame by frame;  -> replies (its own and the worker's)
                  PULL    (inproc)    <- the worker's finished replies
                  PAIR    (monitor)   <- the ROUTER's connection events: a vanished client's sessions close at once
    worker thread PUSH    (inproc)    -> finished replies
                  takes the newest pending frame of every session, batches them into one engine call

ZeroMQ sockets are not thread-safe, so each socket belongs to one thread; the pending table is the
only shared state and sits behind a condition variable. Receiving never waits on the model.

Nothing a client sends may stop the service or starve another client (DESIGN §3): every failure a
message causes becomes an `error` reply or a counted drop; the worker is restarted if it ever dies;
replies queued for a client that does not read, sessions per client, decoded pixels, output size and
message sizes are bounded, and the bounds are announced in `hello`.

One file on purpose (about 750 lines): every request handler here touches the same ROUTER socket and the
same session table on the main thread; the engine thread (worker.py), sessions, flow control and bind rules
live in their own modules.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hmac
import importlib.util
import itertools
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from client.protocol import (
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
from contract.avatar_bank import MAX_CONSENT_CHARACTERS, MAX_NAME_CHARACTERS, AvatarBankError
from contract.model_card import TeacherModel
from server import __version__, capture, drivers, imaging, manifest, provenance
from server.binding import BindRefused, check_bind_address
from server.engine import Engine, ModelError, enroll_unavailable
from server.enrollment import EnrollmentError, enroll_portraits
from server.flow import ConnectionTable, Incoming, MessageBudget, ReplyBacklog, flush_backlogs, send_or_hold
from server.keys import CurveServerKeys, serve_with_curve
from server.manifest import ManifestError, ManifestSigner
from server.portraits import shrunk_portrait
from server.refinement import RefinementJobs, RefinementTarget
from server.sessions import COUNTER_NAMES, FrameJob, ServerCounters, Session
from server.worker import RenderWorker

log = logging.getLogger("megalive.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
_WORKER_ENDPOINT = "inproc://megalive-worker-{}"
_MONITOR_EVENTS = (
    zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = DEFAULT_BIND
    max_sessions: int = 64
    max_sessions_per_client: int = 16
    max_crop_sessions: int = 16  # each holds a face tracker (tens of MB) while it streams
    session_idle_s: float = 120.0  # a session with no message for this long is closed
    crop_idle_s: float = 10.0  # a crop session's face tracker is released after this long without frames
    max_batch: int = 8
    limits: Limits = DEFAULT_LIMITS
    max_image_pixels: int = 4096 * 2304  # a 4K (3840×2160) webcam frame fits; decoded size is read from the header first
    max_output_pixels: int = 2048 * 2048
    queued_replies_per_client: int = 8  # ZeroMQ's send high-water mark (messages)
    backlog_bytes_per_client: int = 1024 * 1024  # small replies held beyond it, for clients that read in bursts
    linger_ms: int = 0  # replies to clients that left are not worth waiting for at shutdown
    receive_hwm: int = 16
    # Messages one connection may send per second (a token bucket with a burst of one second's worth): our
    # clients send a few hundred at most; a flood beyond it is read and let go unparsed, and counted.
    max_messages_per_s: float = 5000.0
    max_engine_restarts: int = 5  # within engine_restart_window_s; one more and the service stops with a failure
    engine_restart_window_s: float = 60.0
    curve: CurveServerKeys | None = None
    max_enroll_portraits: int = 8  # pictures one `enroll` may carry
    # A portrait may be a phone or camera photo, larger than any webcam frame; each is shrunk once decoded.
    max_portrait_pixels: int = 6000 * 4000
    max_avatars: int = 256  # the model's own avatars and the enrolled ones together
    refine_steps: int = 120  # few-shot refinement after each enrollment unless its request asks otherwise (0: none)
    max_refine_steps: int = 1000
    refine_threads: int = 0  # torch threads of a refinement job (0: torch's default)
    refine_target: RefinementTarget = RefinementTarget()  # the enrollment frames, or a teacher's reenactments of them
    watermark: bool = True  # the provenance watermark on every texture; off only with `megalive serve --no-watermark`
    signing: tuple[Path, Path] | None = None  # (certificate chain, ES256 key): `png` textures get C2PA manifests

    @property
    def max_reply_bytes(self) -> int:
        return 4 * self.max_output_pixels + self.limits.max_header_bytes

    @property
    def max_queued_reply_bytes(self) -> int:
        """The most reply bytes the server keeps for one client (beyond the kernel's socket buffer)."""
        return self.queued_replies_per_client * self.max_reply_bytes + self.backlog_bytes_per_client


def _teacher_description(teacher: TeacherModel) -> dict[str, Any]:
    """What `hello` says of a teacher served directly: its card entry without the files and commands that made it."""
    shown = ("system", "preset", "teacher_resolution", "one_shot", "pose_source", "pose", "per_frame", "per_avatar")
    return {
        **{key: teacher.entry[key] for key in shown if key in teacher.entry},
        "identity_shape": teacher.entry.get("identity", {}).get("shape"),
        "enhancer": teacher.enhancer,
    }


class AvatarService:
    """Serve one engine over ZeroMQ. ``run()`` blocks until ``stop()``; ``start()`` runs it on a thread."""

    def __init__(self, *, engine: Engine, config: ServiceConfig = ServiceConfig(), context: zmq.Context | None = None) -> None:
        check_bind_address(config.bind, curve=config.curve is not None)
        self.engine = engine
        self.config = config
        # The ZAP authenticator is one per context: a CURVE service gets a context of its own.
        self._own_context = context is None and config.curve is not None
        self.context = context or (zmq.Context() if self._own_context else zmq.Context.instance())
        self.counters = ServerCounters()
        self.sessions: dict[int, Session] = {}
        self._session_ids = itertools.count(1)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._endpoint = _WORKER_ENDPOINT.format(id(self))
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self.bound_address: str | None = None
        self.bind_error: str | None = None
        self.failure: str | None = None  # set when the service loop itself failed: `megalive serve` exits non-zero
        self._thumbnails = engine.thumbnails()
        self.refinement = RefinementJobs(card=engine.card, threads=config.refine_threads, target=config.refine_target)
        self.signer, self.signing_problem = self._load_signer(config.signing)
        # Face trackers belong to the worker thread; the main thread only queues the ids of closed sessions.
        # The engine thread's state (pending frames, face trackers) outlives a thread that died.
        self.worker = RenderWorker(
            engine=engine,
            context=self.context,
            endpoint=self._endpoint,
            stop=self._stop,
            counters=self.counters,
            sessions=self.sessions,
            max_batch=config.max_batch,
            max_image_pixels=config.max_image_pixels,
            crop_idle_s=config.crop_idle_s,
            watermark=self.watermark_state == "on",  # one decision: what hello and stats report is what the worker does
            signer=self.signer,
        )
        self._connections = ConnectionTable()  # ROUTER identity -> its connection's socket (for disconnect events)
        self._backlogs: dict[bytes, ReplyBacklog] = {}  # ROUTER identity -> replies waiting for room in ZeroMQ's queue
        self._budgets: dict[bytes, MessageBudget] = {}  # ROUTER identity -> its message budget
        self._peer_keys: dict[bytes, str] = {}  # ROUTER identity -> its CURVE public key (Z85), under CURVE
        self._allow_mtime: float | None = None
        self._auth: Any = None
        self._can_crop = importlib.util.find_spec("mediapipe") is not None
        self._handlers = {
            "hello": self._on_hello,
            "avatars": self._on_avatars,
            "open": self._on_open,
            "close": self._on_close,
            "stats": self._on_stats,
            "enroll": self._on_enroll,
            "cancel_refinement": self._on_cancel_refinement,
        }  # `frame` is handled first, apart: it also needs the raw frames

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Run the service on a background thread; returns the bound address once it listens.

        Raises BindRefused (one line) when the address cannot be bound."""
        self._thread = threading.Thread(target=self.run, name="megalive-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("service did not start")
        if self.bound_address is None:
            raise BindRefused(self.bind_error or f"cannot bind {self.config.bind}")
        return self.bound_address

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.worker.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the service thread ends or timeout_s passes."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def engine_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _configure_router(self, router: zmq.Socket) -> None:
        router.setsockopt(zmq.LINGER, self.config.linger_ms)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client raises instead of vanishing
        router.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_frame_bytes)  # checked per frame as its length arrives
        router.setsockopt(zmq.SNDHWM, self.config.queued_replies_per_client)
        router.setsockopt(zmq.RCVHWM, self.config.receive_hwm)  # bounds what a flood can queue in memory
        router.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        if "[" in self.config.bind:
            router.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT
        curve = self.config.curve
        if curve is not None:
            self._auth = serve_with_curve(router, self.context, curve, log_name="megalive.auth")
            self._allow_mtime = curve.allow_dir.stat().st_mtime

    def _bind(self, router: zmq.Socket) -> bool:
        try:
            router.bind(self.config.bind)
        except zmq.ZMQError as error:
            if error.errno == errno.EADDRINUSE:
                port = self.config.bind.rsplit(":", 1)[-1]
                self.bind_error = f"cannot bind {self.config.bind}: port {port} is already in use (another megalive serve?)"
            else:
                self.bind_error = f"cannot bind {self.config.bind}: {error}"
            log.debug("%s", self.bind_error)
            return False
        self.bound_address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return True

    def run(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        results = self.context.socket(zmq.PULL)
        monitor: zmq.Socket | None = None
        try:
            results.setsockopt(zmq.LINGER, 0)
            results.bind(self._endpoint)
            self._configure_router(router)
            monitor = router.get_monitor_socket(_MONITOR_EVENTS)
            if not self._bind(router):
                return
            self._start_worker()
            self._ready.set()
            log.info("serving %s on %s%s", self.engine.card.name, self.bound_address, " (CURVE)" if self.config.curve else "")
            self._loop(router, results, monitor)
        except Exception as error:  # the loop itself broke (not a client's message): serve exits non-zero
            log.exception("service loop failed")
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self._ready.set()
            self._stop.set()
            self.worker.wake()
            if self._worker is not None:
                self._worker.join(1.0)
            if monitor is not None:
                router.disable_monitor()
                monitor.close(linger=0)
            router.close(linger=self.config.linger_ms)
            results.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self.refinement.close()
            if self.signer is not None:
                self.signer.close()
            if self._own_context:
                self.context.term()

    def _loop(self, router: zmq.Socket, results: zmq.Socket, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        next_reap = time.monotonic() + 1.0
        while not self._stop.is_set():
            ready = dict(poller.poll(100))
            if monitor in ready:
                self._on_monitor_events(monitor)
            if results in ready:
                # Forward everything the worker finished, without blocking.
                while True:
                    try:
                        reply = results.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._send(router, reply[0].bytes, reply[1:])
            if self._backlogs:
                self._flush_backlogs(router)
            if router in ready:
                for _ in range(256):  # bounded, so results are forwarded even under a flood
                    incoming = self._receive(router)
                    if incoming is None:
                        break
                    self._handle(router, incoming)
            if not self.engine_alive and not self._stop.is_set():
                self._restart_worker()
            if time.monotonic() >= next_reap:
                self._apply_refinements()
                self._reap_idle_sessions()
                self._reload_allow_list()
                next_reap = time.monotonic() + 1.0

    def _receive(self, router: zmq.Socket) -> Incoming | None:
        """One message, read frame by frame: frames past the part or byte limit are let go as they are
        read, never gathered (libzmq delivers a message whole, but each frame is bounded by MAXMSGSIZE)."""
        try:
            identity = router.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        incoming = Incoming(peer=identity.bytes, frames=[], shed=not self._spend_message(identity.bytes))
        limits = self.config.limits
        total = 0
        while router.getsockopt(zmq.RCVMORE):
            frame = router.recv(copy=False)
            total += len(frame.buffer)
            if incoming.oversized or incoming.shed:
                continue
            if len(incoming.frames) >= limits.max_parts or total > limits.max_message_bytes:
                incoming.oversized = True
                del incoming.frames[1:]  # keep the header only, to answer with its request id
                continue
            incoming.frames.append(frame)
        if incoming.frames and incoming.peer not in self._connections:
            first = incoming.frames[0]
            try:
                fd = int(first.get(zmq.SRCFD))
            except zmq.ZMQError:
                fd = None
            if fd is not None:
                for gone in self._connections.register(incoming.peer, fd):
                    self._forget_peer(gone)
            if self.config.curve is not None:
                # pyzmq's authenticator names a CURVE client by its public key (Z85): proof of who is talking.
                self._peer_keys[incoming.peer] = str(first.get("User-Id"))
        return incoming

    def _spend_message(self, peer: bytes) -> bool:
        """Take one message from the connection's bucket; False when it is empty."""
        now = time.monotonic()
        rate = self.config.max_messages_per_s
        budget = self._budgets.get(peer)
        if budget is None:
            budget = self._budgets[peer] = MessageBudget(tokens=rate, refilled_at=now)
        budget.tokens = min(rate, budget.tokens + (now - budget.refilled_at) * rate)
        budget.refilled_at = now
        if budget.tokens < 1.0:
            return False
        budget.tokens -= 1.0
        return True

    def _on_monitor_events(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                for peer in self._connections.disconnected(int(event["value"])):
                    self._forget_peer(peer)
            else:
                self.counters.curve_refused += 1

    def _forget_peer(self, peer: bytes) -> None:
        """A client's connection closed: its sessions close, its budget, backlog and key go."""
        self._peer_keys.pop(peer, None)
        self._budgets.pop(peer, None)
        self._backlogs.pop(peer, None)
        self.counters.disconnected_sessions += self._close_sessions_of(peer)

    def _reload_allow_list(self) -> None:
        """Keys the operator adds to (or removes from) the allow folder take effect within a second."""
        curve = self.config.curve
        if curve is None or self._auth is None:
            return
        try:
            mtime = curve.allow_dir.stat().st_mtime
        except OSError:
            return
        if mtime != self._allow_mtime:
            self._allow_mtime = mtime
            self._auth.configure_curve(domain="*", location=str(curve.allow_dir))
            log.info("allow folder %s reloaded: %d keys", curve.allow_dir, curve.allowed_keys())

    # -------------------------------------------------------------------------------- worker supervision

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self.worker.run, name="megalive-engine", daemon=True)
        self._worker.start()

    def _restart_worker(self) -> None:
        """The engine thread died (a bug, never a client's frame): log it, count it, start a new one.

        Too many deaths in the window stop the service with a failure, so a supervisor restarts the process."""
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self.config.engine_restart_window_s:
            self._restart_times.popleft()
        reason = self.worker.failure or "no reason recorded"
        if len(self._restart_times) > self.config.max_engine_restarts:
            raise RuntimeError(
                f"the engine thread died {len(self._restart_times)} times in {self.config.engine_restart_window_s:.0f} s; last: {reason}"
            )
        self.counters.engine_restarts += 1
        log.error("engine thread died (%s); restarting it (%d so far)", reason, self.counters.engine_restarts)
        self._start_worker()

    # -------------------------------------------------------------------------------- replies

    def _send(self, router: zmq.Socket, peer: bytes, frames: list) -> None:
        """Send a reply, or hold it in the client's small backlog when ZeroMQ's queue for it is full.

        A texture that does not fit becomes a `dropped` reply (so the frame still ends in exactly one
        event), and the backlog holds small replies only, up to backlog_bytes_per_client: a client
        that does not read costs queued_replies_per_client replies plus that, never more."""
        overflowed, error = send_or_hold(router, peer, frames, self._backlogs, limit_bytes=self.config.backlog_bytes_per_client)
        self.counters.reply_overflow += overflowed
        if error is not None:
            self._unroutable(peer, error)

    def _flush_backlogs(self, router: zmq.Socket) -> None:
        for peer, error in flush_backlogs(router, self._backlogs):
            self._unroutable(peer, error)

    def _unroutable(self, peer: bytes, error: zmq.ZMQError) -> None:
        if error.errno != zmq.EHOSTUNREACH:
            raise error
        # The client is gone: close its sessions rather than render for nobody.
        self.counters.unroutable += 1
        self._backlogs.pop(peer, None)
        self._close_sessions_of(peer)

    def _reply(self, router: zmq.Socket, peer: bytes, header: dict[str, Any], buffers: tuple[Buffer, ...] = ()) -> None:
        self._send(router, peer, encode(header, buffers))

    def _error(self, router: zmq.Socket, peer: bytes, error: ProtocolError) -> None:
        self._send(router, peer, error_frames(error.code, error.message, request_id=error.request_id))

    # -------------------------------------------------------------------------------- requests

    def _handle(self, router: zmq.Socket, incoming: Incoming) -> None:
        peer = incoming.peer
        if incoming.shed:
            self.counters.shed_messages += 1
            return
        try:
            if incoming.oversized:
                self.counters.oversized += 1
                raise ProtocolError(
                    "too_large",
                    f"a message holds at most {self.config.limits.max_parts} frames and {self.config.limits.max_message_bytes} bytes",
                    request_id=_header_field(incoming.frames, "id"),
                )
            request = decode([frame.buffer for frame in incoming.frames], self.config.limits)
            if request.op == "frame":
                self._on_frame(router, peer, request, tuple(incoming.frames))
                return
            handler = self._handlers.get(request.op)
            if handler is None:
                raise ProtocolError("bad_request", f"{request.op!r} is a reply, not a request", request_id=request.request_id)
            handler(router, peer, request)
        except ProtocolError as error:
            self._count_refusal(peer, incoming)
            self._error(router, peer, error)
        except Exception as error:  # a client's bytes found a bug: answer `internal`, never end the loop
            log.exception("request failed")
            self.counters.internal_errors += 1
            self._count_refusal(peer, incoming)
            request_id = _header_field(incoming.frames, "id")
            self._send(
                router, peer, error_frames("internal", f"the server failed on this request: {type(error).__name__}", request_id=request_id)
            )

    def _count_refusal(self, peer: bytes, incoming: Incoming) -> None:
        self.counters.rejected += 1
        session = self.sessions.get(_header_field(incoming.frames, "session"))  # type: ignore[arg-type]
        if session is not None and session.peer == peer:
            session.counters.errors += 1

    def _on_hello(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        versions = request.get("versions", [PROTOCOL_VERSION])
        if not isinstance(versions, list) or PROTOCOL_VERSION not in versions:
            raise ProtocolError(
                "unsupported_version", f"client speaks {versions!r}; this server speaks v{PROTOCOL_VERSION}", request_id=request.request_id
            )
        card = self.engine.card
        enroll_state = (
            {"available": True, "bank_problem": self.engine.bank_problem, "refinement": self._refinement_state()}
            if self.engine.can_enroll
            else {"available": False, "why": enroll_unavailable(self.engine)}
        )
        self._reply(
            router,
            peer,
            {
                "op": "hello",
                "id": request.request_id,
                "server": f"megalive {__version__}",
                "protocol": PROTOCOL_VERSION,
                "models": [
                    {
                        "name": card.name,
                        "resolution": list(card.resolution),
                        "avatars": self.engine.num_avatars,
                        "contract": self.engine.contract,
                        "drivers": list(card.drivers),
                        "providers": self.engine.providers,
                        # True: the driver is a landmark image the server draws; image sessions need crop "auto", and
                        # image and landmarks sessions may ask to retarget.
                        "landmark_driven": self.engine.landmark_driven,
                        # "student", "personal" (landmark-driven few-shot) or "teacher" (MegaPortraits served directly:
                        # one-shot, pictures only); a teacher's card entry (preset, pose, identity layout, enhancer) beside it.
                        "family": self.engine.family,
                        "teacher": None if card.teacher is None else _teacher_description(card.teacher),
                    }
                ],
                "capabilities": {
                    "drivers": list(card.drivers),
                    "formats": list(OUTPUT_FORMATS),
                    "crops": ["none", "auto"] if self._can_crop else ["none"],
                    "codecs": list(CODECS),
                    "enroll": enroll_state,
                    "curve": self.config.curve is not None,
                    "watermark": self.watermark_state,
                    "c2pa": "on" if self.signer is not None else f"off: {self.signing_problem}",
                },
                "limits": self.announced_limits(),
                "engine": self._engine_state(),
            },
        )

    @staticmethod
    def _load_signer(signing: tuple[Path, Path] | None) -> tuple[ManifestSigner | None, str]:
        """The C2PA signer of `png` textures, or None and why not (no key given, c2pa missing, an unusable key)."""
        if signing is None:
            return None, "no signing key (megalive keys signing, or --signing-cert and --signing-key)"
        problem = manifest.unavailable()
        if problem is not None:
            return None, problem
        try:
            return ManifestSigner(cert_path=signing[0], key_path=signing[1]), ""
        except ManifestError as error:
            return None, str(error)

    @property
    def watermark_state(self) -> str:
        """`on`, `off` (``--no-watermark``) or `unavailable: <why>`, as `hello` and `stats` report it."""
        if not self.config.watermark:
            return "off"
        problem = provenance.unavailable_for(self.engine.resolution)
        return "on" if problem is None else f"unavailable: {problem}"

    def announced_limits(self) -> dict[str, int]:
        """Every bound the server enforces, as `hello` announces them."""
        config, limits = self.config, self.config.limits
        return {
            "max_header_bytes": limits.max_header_bytes,
            "max_buffer_bytes": limits.max_buffer_bytes,
            "max_buffers": limits.max_buffers,
            "max_message_bytes": limits.max_message_bytes,
            "max_image_pixels": config.max_image_pixels,
            "max_output_pixels": config.max_output_pixels,
            "max_sessions": config.max_sessions,
            "max_sessions_per_client": config.max_sessions_per_client,
            "max_crop_sessions": config.max_crop_sessions,
            "max_queued_reply_bytes": config.max_queued_reply_bytes,
            "max_batch": config.max_batch,
            "max_messages_per_s": int(config.max_messages_per_s),
            "max_enroll_portraits": config.max_enroll_portraits,
            "max_refine_steps": config.max_refine_steps,
            "max_portrait_pixels": config.max_portrait_pixels,
            "max_avatars": config.max_avatars,
            "max_avatar_name_characters": MAX_NAME_CHARACTERS,
            "max_consent_characters": MAX_CONSENT_CHARACTERS,
        }

    def _engine_state(self) -> dict[str, Any]:
        return {"alive": self.engine_alive, "restarts": self.counters.engine_restarts, "last_failure": self.worker.failure}

    def _on_avatars(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        entries, buffers = [], []
        for index, (name, thumbnail) in enumerate(zip(self.engine.avatar_names, self._thumbnails)):
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
        retarget = request.get("retarget", False)
        if driver not in DRIVER_KINDS:
            raise ProtocolError("bad_request", f"driver {driver!r} not one of {list(DRIVER_KINDS)}", request_id=rid)
        if driver != "image" and self.engine.teacher:
            raise ProtocolError(
                "bad_request",
                f"{self.engine.card.name} is a MegaPortraits teacher, driven by pictures only: open it with driver 'image' "
                f"({driver} drivers are for students and personal models)",
                request_id=rid,
            )
        if driver not in self.engine.card.drivers:
            raise ProtocolError(
                "bad_request", f"the loaded model has no {driver!r} input (it accepts {list(self.engine.card.drivers)})", request_id=rid
            )
        if output_format not in OUTPUT_FORMATS:
            raise ProtocolError("bad_request", f"format {output_format!r} not one of {list(OUTPUT_FORMATS)}", request_id=rid)
        if crop not in CROP_MODES:
            raise ProtocolError("bad_request", f"crop {crop!r} not one of {list(CROP_MODES)}", request_id=rid)
        if crop == "auto" and driver != "image":
            raise ProtocolError("bad_request", f"crop 'auto' is for image drivers; {driver} frames are not pictures", request_id=rid)
        if not isinstance(return_landmarks, bool) or (return_landmarks and crop != "auto"):
            raise ProtocolError("bad_request", "landmarks: true needs crop 'auto' (the server finds them while cropping)", request_id=rid)
        landmark_driven = self.engine.landmark_driven
        filter_config = drivers.filter_config_from_request(request.get("filter"), kind=driver, request_id=rid)
        if landmark_driven and driver == "image":
            # The face mesh's points drive the model, and they jitter by a pixel or so: the landmarks sessions' filters
            # steady them (the crop box keeps the image sessions' own).
            points = drivers.filter_config_from_request(request.get("filter"), kind="landmarks", request_id=rid)
            filter_config = dataclasses.replace(filter_config, pose=points.pose, expression=points.expression)
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 16 <= n <= 4096 for n in size)
        ):
            raise ProtocolError("bad_request", f"size must be [height, width] between 16 and 4096, got {size!r}", request_id=rid)
        if size[0] * size[1] > self.config.max_output_pixels:
            raise ProtocolError(
                "too_large", f"output size {size[0]}×{size[1]} exceeds this server's {self.config.max_output_pixels} pixels", request_id=rid
            )
        if not 0 <= avatar < self.engine.num_avatars:
            raise ProtocolError(
                "unknown_avatar", f"avatar {avatar} does not exist (this model has {self.engine.num_avatars})", request_id=rid
            )
        self._check_landmark_options(driver=driver, crop=crop, retarget=retarget, avatar=avatar, request_id=rid)
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError("busy", f"the server holds its maximum of {self.config.max_sessions} sessions", request_id=rid)
        if sum(s.peer == peer for s in self.sessions.values()) >= self.config.max_sessions_per_client:
            raise ProtocolError("busy", f"this client holds its maximum of {self.config.max_sessions_per_client} sessions", request_id=rid)
        crop_config = None
        if crop == "auto":
            if not self._can_crop:
                raise ProtocolError(
                    "bad_request",
                    "crop 'auto' is unavailable on this server: mediapipe is not installed (pip install 'megalive[capture]')",
                    request_id=rid,
                )
            if sum(s.crop == "auto" for s in self.sessions.values()) >= self.config.max_crop_sessions:
                raise ProtocolError(
                    "busy", f"the server holds its maximum of {self.config.max_crop_sessions} crop 'auto' sessions", request_id=rid
                )
            crop_config = capture.CropConfig(output_size=self.engine.resolution[0], box_filter=filter_config.box)
        now = time.monotonic()
        session = Session(
            session_id=next(self._session_ids),
            token=secrets.token_hex(16),
            peer=peer,
            avatar=avatar,
            driver=driver,
            size=(size[0], size[1]),
            output_format=output_format,
            crop=crop,
            opened_at=now,
            last_seen=now,
            retarget=retarget,
            stabiliser=drivers.SignalStabiliser(kind=driver if driver != "image" else "landmarks", config=filter_config)
            if driver != "image" or landmark_driven
            else None,
            crop_config=crop_config,
            return_landmarks=return_landmarks,
        )
        self.sessions[session.session_id] = session
        self._reply(
            router,
            peer,
            {
                "op": "open",
                "id": rid,
                "session": session.session_id,
                "token": session.token,
                "size": size,
                "format": output_format,
                "retarget": retarget,
            },
        )

    def _check_landmark_options(self, *, driver: str, crop: str, retarget: object, avatar: int, request_id: int) -> None:
        """A landmark-driven model's image sessions need the face mesh (crop "auto"); ``retarget`` is for its image and
        landmarks sessions only (the arkit graph retargets onto each avatar already)."""
        name = self.engine.card.name
        if not isinstance(retarget, bool):
            raise ProtocolError("bad_request", f"retarget must be true or false, got {retarget!r}", request_id=request_id)
        if not self.engine.landmark_driven:
            if retarget:
                raise ProtocolError(
                    "bad_request", f"retarget is for landmark-driven models; {name} is driven by pictures", request_id=request_id
                )
            return
        if driver == "image" and crop != "auto":
            raise ProtocolError(
                "bad_request", "this model is driven by landmarks: open the image driver with crop 'auto'", request_id=request_id
            )
        if retarget and driver == "arkit":
            raise ProtocolError(
                "bad_request",
                "retarget is for image and landmarks drivers: the arkit graph retargets onto the avatar already",
                request_id=request_id,
            )
        neutral = self.engine.neutral_landmarks
        if retarget and (neutral is None or not 0 <= avatar < len(neutral)):
            raise ProtocolError(
                "bad_request", f"avatar {avatar} has no neutral landmarks in {name}'s card to retarget onto", request_id=request_id
            )

    def _owned_session(self, peer: bytes, request: Message) -> Session:
        """The request's session, when this connection opened it and the request carries its token."""
        session_id = require(request, "session", int)
        token = request.get("token")
        session = self.sessions.get(session_id)
        if (
            session is None
            or session.peer != peer
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode("utf-8", "replace"), session.token.encode())
        ):
            raise ProtocolError(
                "unknown_session",
                f"no session {session_id} of this client (closed, expired, or the server restarted)",
                request_id=request.request_id,
            )
        session.last_seen = time.monotonic()
        return session

    def _on_close(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        session = self._owned_session(peer, request)
        self._close_session(session)
        self._reply(router, peer, {"op": "close", "id": request.request_id, "session": session.session_id, "ok": True})

    def _on_stats(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        own = [s for s in self.sessions.values() if s.peer == peer]
        others = [s.counter_values() for s in self.sessions.values() if s.peer != peer]
        self._reply(
            router,
            peer,
            {
                "op": "stats",
                "id": request.request_id,
                "client": {"curve_key": self._peer_keys.get(peer)},
                "sessions": [s.as_dict() for s in own],  # a client sees its own sessions ...
                "other_clients": {
                    "sessions": len(others),
                    **{name: sum(v[name] for v in others) for name in COUNTER_NAMES},
                },  # ... and totals
                "engine": {**self.engine.counters.as_dict(), **self._engine_state()},
                "refinement": {**self._refinement_state(), "jobs": self.refinement.as_dicts()},
                "server": {**self.counters.as_dict(), "watermark": self.watermark_state},
            },
        )

    def _on_enroll(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        """Portraits + name + consent -> a new avatar at once (server/enrollment.py). It runs on this thread: a face
        search and one embedder pass, a second or so, during which other clients' replies wait."""
        rid = request.request_id
        if not self.engine.can_enroll:
            raise ProtocolError("bad_request", f"enroll is unavailable: {enroll_unavailable(self.engine)}", request_id=rid)
        name, consent = require(request, "name", str), request.get("consent")
        if not isinstance(consent, str) or not consent.strip():
            raise ProtocolError(
                "bad_request", "enroll needs a consent statement: the person's own words that they agree to this avatar", request_id=rid
            )
        if self.engine.num_avatars >= self.config.max_avatars:
            raise ProtocolError("too_large", f"the server holds its maximum of {self.config.max_avatars} avatars", request_id=rid)
        steps = self._refine_steps(request)
        if not 1 <= len(request.buffers) <= self.config.max_enroll_portraits:
            raise ProtocolError(
                "bad_request",
                f"enroll carries 1 to {self.config.max_enroll_portraits} portraits, got {len(request.buffers)}",
                request_id=rid,
            )
        portraits = [
            shrunk_portrait(imaging.decode_driver_image(buffer, max_pixels=self.config.max_portrait_pixels, request_id=rid))
            for buffer in request.buffers
        ]
        try:
            report = enroll_portraits(
                self.engine,
                portraits,
                name=name,
                consent=consent,
                max_portraits=self.config.max_enroll_portraits,
                made_by=f"megalive {__version__}",
            )
        except (EnrollmentError, capture.CaptureUnavailable) as error:
            raise ProtocolError("bad_request", str(error), request_id=rid) from None
        self._thumbnails = self.engine.thumbnails()
        log.info("enrolled avatar %d %r from %d portrait(s) in %.2f s", report.avatar, report.name, report.frames, report.seconds)
        refinement: dict[str, Any] = {"steps": steps}
        if steps and self.refinement.available:
            refinement["job"] = self.refinement.start(
                avatar=report.avatar,
                name=report.name,
                frames=report.crops,
                landmarks=report.landmarks,
                identity=report.identity,
                steps=steps,
            )
            log.info("refining avatar %d %r: job %d, %d steps", report.avatar, report.name, refinement["job"], steps)
        elif steps:
            refinement["unavailable"] = self.refinement.problem
        self._reply(
            router,
            peer,
            {
                "op": "enroll",
                "id": rid,
                "avatar": report.avatar,
                "name": report.name,
                "frames": report.frames,
                "notes": list(report.notes),
                "seconds": report.seconds,
                "refinement": refinement,
            },
        )

    def _refine_steps(self, request: Message) -> int:
        """The refinement steps an enroll request asks for (the server's default when it says nothing)."""
        steps = request.get("refine_steps", self.config.refine_steps)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= self.config.max_refine_steps:
            raise ProtocolError(
                "bad_request", f"refine_steps must be an integer in [0, {self.config.max_refine_steps}]", request_id=request.request_id
            )
        return steps

    def _refinement_state(self) -> dict[str, Any]:
        problem = self.refinement.problem
        if problem is not None:
            return {"available": False, "why": problem}
        return {"available": True, "default_steps": self.config.refine_steps, "target": self.refinement.target.describe()}

    def _on_cancel_refinement(self, router: zmq.Socket, peer: bytes, request: Message) -> None:
        job = require(request, "job", int)
        try:
            cancelled = self.refinement.cancel(job)
        except KeyError:
            raise ProtocolError("bad_request", f"no refinement job {job}", request_id=request.request_id) from None
        if cancelled:
            log.info("refinement job %d cancelled", job)
        self._reply(router, peer, {"op": "cancel_refinement", "id": request.request_id, "job": job, "cancelled": cancelled})

    def _apply_refinements(self) -> None:
        """Swap in the tensors of refinement jobs that finished (each written to the bank first)."""
        for job, output in self.refinement.finished():
            records = self.engine.avatar_records()
            how_made = dict(records[job.avatar].provenance) if job.avatar < len(records) else {}
            fitted_to = (
                "a frozen teacher's reenactments of the enrollment frames"
                if output.summary.get("target", {}).get("kind") == "teacher"
                else "the enrollment frames (self-reenactment)"
            )
            how_made["refined"] = {"how": f"few-shot: the identity tensor fitted to {fitted_to}, the student frozen", **output.summary}
            try:
                self.engine.replace_identity(job.avatar, identity=output.identity, provenance=how_made)
            except (AvatarBankError, ModelError, OSError) as error:
                job.state, job.error = "failed", f"the refined avatar could not be stored: {error}"
                log.error("refinement job %d: %s", job.job_id, job.error)
                continue
            log.info("avatar %d %r refined in %.0f s (%d steps)", job.avatar, job.name, job.seconds or 0, output.summary.get("steps", 0))

    def _on_frame(self, router: zmq.Socket, peer: bytes, request: Message, frames: tuple[zmq.Frame, ...]) -> None:
        session = self._owned_session(peer, request)
        seq = require(request, "seq", int)
        if len(request.buffers) != 1:
            raise ProtocolError("bad_request", "a frame carries exactly one driver buffer", request_id=request.request_id)
        stamp = request.get("t")
        # A stamp that is not a finite number is ignored; the session clock never lets a stamp stall or poison a filter.
        client_time = float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp) else None
        received_at = time.perf_counter()
        session.counters.received += 1
        job = FrameJob(
            session=session,
            request_id=request.request_id,
            seq=seq,
            client_time=client_time,
            signal_time_s=session.clock(client_time, received_at),
            driver=request.buffers[0],
            frames=frames,
            received_at=received_at,
            curve_names=request.get("names"),
        )
        superseded = self.worker.submit(job)
        if superseded is not None:
            # Latest wins: the older frame will never render, so say so now instead of making the client wait.
            session.counters.dropped += 1
            self._reply(router, peer, {"op": "dropped", "id": superseded.request_id, "session": session.session_id, "seq": superseded.seq})

    # -------------------------------------------------------------------------------- sessions

    def _close_session(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        self.worker.forget(session)

    def _close_sessions_of(self, peer: bytes) -> int:
        closing = [s for s in self.sessions.values() if s.peer == peer]
        for session in closing:
            self._close_session(session)
        return len(closing)

    def _reap_idle_sessions(self) -> None:
        deadline = time.monotonic() - self.config.session_idle_s
        for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
            self.counters.reaped_sessions += 1
            self._close_session(session)


def _header_field(frames: list[zmq.Frame], key: str) -> int | None:
    """Best-effort integer field of a message that failed validation (its request id, its session)."""
    try:
        header = unpack_header(frames[0].buffer) if frames else {}
    except ProtocolError:
        return None
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
