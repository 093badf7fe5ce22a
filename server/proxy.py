"""Several servers behind one address (DESIGN §3, scale-out): a ZeroMQ broker with sessions that stick to a backend.

The loop is the request-reply broker of ZeroMQ's guide: a ROUTER facing the clients, DEALERs facing the servers,
one zmq.Poller. Two things keep it from being zmq.proxy() or a zmq.devices device as they ship:

- a DEALER back end deals each message to the next server in turn, but a session must stay on the server that
  opened it (its latest-wins slot, filters and face tracker live there);
- the server reads frame 0 as the header, not the routing envelope that a ROUTER-DEALER device puts in front of it.

So there is one DEALER per client and backend (made on first use). Each server then sees each client as a
connection of its own, and its own rules hold unchanged: a session belongs to the connection that opened it,
sessions per client and message rates are per client, a vanished client's sessions close with its connection.
What the broker adds is only what a broker must know:

- which backend holds which session. `open` goes to the live backend with the fewest sessions (ties in turn);
  the backend's session id is replaced by the proxy's own (every server counts from 1), and every later `frame`
  and `close` of that session goes to that backend;
- whether a backend is there. Each backend gets a `hello` every probe_interval_s on a connection of its own; one
  that has not answered for probe_timeout_s (a hung or stopped process, a host that drops packets, an address
  where nothing listens) or whose connection closes is down. Its sessions end: every frame of theirs in flight,
  and any later one, is answered `unknown_session`, and the client opens the session again (client.py does so by
  itself), on a live backend. An `open`, `hello` or `avatars` in flight to it is sent to another live backend.

`stats` asks every live backend and sums their counters; each backend's own figures are in
stats["server"]["backends"]. `enroll` is refused: an avatar enrolled on one server would be missing on the others.
Every send is non-blocking; a reply a client has no room for is held in a small backlog or, for a texture, becomes
`dropped`, as the server does. The backends must serve the same model (a warning says when they do not).
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from client.client import CurveClientKeys
from client.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    decode,
    encode,
    error_frames,
    require,
    unpack_header,
)
from server.binding import BindRefused, check_bind_address, is_loopback_tcp
from server.flow import ConnectionTable, Incoming, MessageBudget, ReplyBacklog, flush_backlogs, send_or_hold
from server.keys import CurveServerKeys, serve_with_curve
from server.sessions import COUNTER_NAMES

log = logging.getLogger("megalive.proxy")

DEFAULT_PROXY_BIND = "tcp://127.0.0.1:5555"  # where clients look by default; the servers then listen elsewhere
ENROLL_REFUSED = (
    "enroll through the proxy is refused: an avatar enrolled on one server would be missing on the others; enroll on each server"
)
_FRONT_EVENTS = (
    zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_BACKEND_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class ProxyConfigError(ValueError):
    """A proxy configuration that cannot work; the message is one line."""


@dataclass(frozen=True)
class BackendLink:
    """One server behind the proxy: its address, and the keys to reach it over CURVE (servers on other hosts)."""

    address: str
    curve: CurveClientKeys | None = None


@dataclass(frozen=True)
class ProxyConfig:
    backends: tuple[BackendLink, ...]
    bind: str = DEFAULT_PROXY_BIND
    curve: CurveServerKeys | None = None  # the front's keys, as `megalive serve` takes them
    probe_interval_s: float = 0.5  # a `hello` to every backend this often
    probe_timeout_s: float = 1.5  # a backend silent this long is down (below the clients' 2 s timeout, so they see unknown_session)
    client_idle_s: float = 120.0  # a client silent this long is forgotten (its connections to the servers close)
    limits: Limits = DEFAULT_LIMITS
    queued_replies_per_client: int = 8  # the front's send high-water mark (messages), as the server's
    backlog_bytes_per_client: int = 1024 * 1024  # small replies held beyond it
    receive_hwm: int = 16
    backend_hwm: int = 64  # messages queued towards one backend on one client's connection
    max_messages_per_s: float = 5000.0  # per client connection, as the server's
    max_pending_per_client: int = 1024  # requests of one client awaiting a backend's reply
    linger_ms: int = 0

    def __post_init__(self) -> None:
        if not self.backends:
            raise ProxyConfigError("the proxy needs at least one backend")
        addresses = [link.address for link in self.backends]
        if len(set(addresses)) != len(addresses):
            raise ProxyConfigError(f"a backend is listed twice: {addresses}")
        for link in self.backends:
            check_backend_address(link.address, curve=link.curve is not None)
        if not 0 < self.probe_interval_s <= self.probe_timeout_s:
            raise ProxyConfigError("the probe interval must be positive and at most the probe timeout")


def check_backend_address(address: str, *, curve: bool) -> None:
    """tcp, ipc or inproc; a server on another host only over CURVE (it serves nothing else there)."""
    if address.startswith(("ipc://", "inproc://")):
        return
    if not address.startswith("tcp://") or ":" not in address[len("tcp://") :]:
        raise ProxyConfigError(f"backend {address!r} is not a ZeroMQ address like tcp://HOST:PORT")
    if curve or is_loopback_tcp(address):
        return
    raise ProxyConfigError(
        f"backend {address} is on another host, where a server listens only with CURVE: "
        "pass --backend-key (its public key) and --proxy-key (the proxy's key pair)"
    )


@dataclass(frozen=True)
class BackendStatus:
    """What the proxy knows of one backend now."""

    address: str
    state: str  # "starting" (not answered yet), "up" or "down"
    why: str  # why it is not up ("" when it is)
    sessions: int  # sessions the proxy keeps on it
    model: str | None  # the model its hello named


@dataclass
class ProxyCounters:
    forwarded: int = 0  # requests passed to a backend
    rejected: int = 0  # requests the proxy answered itself with an error (unknown_session, busy, ...)
    failed_over_sessions: int = 0  # sessions that ended with their backend (their clients were told unknown_session)
    backend_failures: int = 0  # times a backend went from up to down
    resent: int = 0  # open / hello / avatars sent again to another backend after theirs went down
    late_replies: int = 0  # replies for sessions already ended with their backend, let go
    bad_replies: int = 0  # backend messages whose header could not be read, let go
    reply_overflow: int = 0  # replies not queued for a client that does not read (textures sent as `dropped`)
    unroutable: int = 0  # replies to clients that had gone
    shed_messages: int = 0  # messages over their connection's rate, let go unanswered
    oversized: int = 0
    disconnected_clients: int = 0
    idle_clients: int = 0
    curve_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _Backend:
    index: int
    link: BackendLink
    state: str = "starting"
    why: str = "has not answered hello yet"
    probe: zmq.Socket | None = None  # the DEALER that carries the probes
    monitor: zmq.Socket | None = None  # its connection events
    heard_at: float = 0.0  # its last answer (or when probing began)
    next_probe_at: float = 0.0
    model: str | None = None
    sessions: int = 0


@dataclass
class _Session:
    session_id: int  # the proxy's, as the client knows it
    client: bytes
    backend: int
    backend_session: int


@dataclass
class _Pending:
    """A request a backend owes an answer to. ``resend``: the request's frames (open, hello, avatars), to send to
    another backend should this one go down; frames and closes end with their session instead."""

    op: str
    backend: int
    session: int | None = None
    resend: list[bytes] | None = None


@dataclass
class _Client:
    identity: bytes
    budget: MessageBudget
    last_seen: float
    dealers: dict[int, zmq.Socket] = field(default_factory=dict)  # backend index -> this client's connection to it
    pending: dict[int, _Pending] = field(default_factory=dict)  # request id -> what it waits for
    curve_key: str | None = None


@dataclass
class _StatsRequest:
    client: bytes
    request_id: int
    deadline: float
    asked: set[int] = field(default_factory=set)
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)


class AvatarProxy:
    """Relay clients to several servers. ``run()`` blocks until ``stop()``; ``start()`` runs it on a thread."""

    def __init__(self, *, config: ProxyConfig, context: zmq.Context | None = None) -> None:
        check_bind_address(config.bind, curve=config.curve is not None)
        self.config = config
        self._own_context = context is None and config.curve is not None  # a ZAP authenticator is one per context
        self.context = context or (zmq.Context() if self._own_context else zmq.Context.instance())
        self.counters = ProxyCounters()
        self.bound_address: str | None = None
        self.bind_error: str | None = None
        self.failure: str | None = None
        self._backends = [_Backend(index=i, link=link) for i, link in enumerate(config.backends)]
        self._clients: dict[bytes, _Client] = {}
        self._sessions: dict[int, _Session] = {}
        self._by_backend_session: dict[tuple[bytes, int, int], int] = {}  # (client, backend, its session id) -> proxy's
        self._stats: dict[tuple[bytes, int], _StatsRequest] = {}
        self._session_ids = itertools.count(1)
        self._probe_ids = itertools.count(1)
        self._turn = 0  # round robin among equally loaded backends
        self._sockets: dict[zmq.Socket, tuple[str, Any]] = {}  # polled socket -> what it is
        self._poller = zmq.Poller()
        self._connections = ConnectionTable()
        self._backlogs: dict[bytes, ReplyBacklog] = {}
        self._auth: Any = None
        self._allow_mtime: float | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Run on a background thread; returns the bound address. BindRefused (one line) when it cannot bind."""
        self._thread = threading.Thread(target=self.run, name="megalive-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.config.probe_timeout_s + 10.0):  # the backends' first answers come first
            raise RuntimeError("proxy did not start")
        if self.bound_address is None:
            raise BindRefused(self.bind_error or f"cannot bind {self.config.bind}")
        return self.bound_address

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def backend_states(self) -> list[BackendStatus]:
        """A snapshot of every backend (read from any thread: plain values)."""
        return [BackendStatus(address=b.link.address, state=b.state, why=b.why, sessions=b.sessions, model=b.model) for b in self._backends]

    def run(self) -> None:
        front = self.context.socket(zmq.ROUTER)
        monitor: zmq.Socket | None = None
        try:
            self._configure_front(front)
            monitor = front.get_monitor_socket(_FRONT_EVENTS)
            now = time.monotonic()
            for backend in self._backends:
                self._open_probe(backend, now)
            # Clients come in only once every backend has answered or timed out (at most probe_timeout_s): a first
            # `open` would otherwise find none up yet and be told busy.
            self._loop(front, monitor, settling=True)
            try:
                front.bind(self.config.bind)
            except zmq.ZMQError as error:
                in_use = error.errno == errno.EADDRINUSE
                self.bind_error = f"cannot bind {self.config.bind}: " + ("the port is already in use" if in_use else str(error))
                return
            self.bound_address = front.getsockopt_string(zmq.LAST_ENDPOINT)
            self._watch(front, "front", None)
            self._watch(monitor, "front-monitor", None)
            self._ready.set()
            log.info("proxy on %s for %s", self.bound_address, self._summary())
            self._loop(front, monitor)
        except Exception as error:  # the loop itself broke (not a message): `megalive proxy` exits non-zero
            log.exception("proxy loop failed")
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self._ready.set()
            for client in list(self._clients.values()):
                self._close_dealers(client)
            for backend in self._backends:
                self._close_probe(backend)
            if monitor is not None:
                front.disable_monitor()
                monitor.close(linger=0)
            front.close(linger=self.config.linger_ms)
            if self._auth is not None:
                self._auth.stop()
            if self._own_context:
                self.context.term()

    def _configure_front(self, front: zmq.Socket) -> None:
        config = self.config
        front.setsockopt(zmq.LINGER, config.linger_ms)
        front.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client raises instead of vanishing
        front.setsockopt(zmq.MAXMSGSIZE, config.limits.max_frame_bytes)
        front.setsockopt(zmq.SNDHWM, config.queued_replies_per_client)
        front.setsockopt(zmq.RCVHWM, config.receive_hwm)
        front.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        front.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        if "[" in config.bind:
            front.setsockopt(zmq.IPV6, 1)
        if config.curve is not None:
            self._auth = serve_with_curve(front, self.context, config.curve, log_name="megalive.auth")
            self._allow_mtime = config.curve.allow_dir.stat().st_mtime

    def _watch(self, socket: zmq.Socket, kind: str, what: Any) -> None:
        self._sockets[socket] = (kind, what)
        self._poller.register(socket, zmq.POLLIN)

    def _unwatch(self, socket: zmq.Socket) -> None:
        if self._sockets.pop(socket, None) is not None:
            self._poller.unregister(socket)

    def _loop(self, front: zmq.Socket, monitor: zmq.Socket, *, settling: bool = False) -> None:
        """Poll until stop(); ``settling``: only until no backend is still "starting" (the front is not bound yet)."""
        next_chores = time.monotonic() + 1.0
        while not self._stop.is_set() and not (settling and all(b.state != "starting" for b in self._backends)):
            ready = dict(self._poller.poll(50))
            for socket in ready:
                kind, what = self._sockets.get(socket, ("gone", None))  # closed by an earlier socket's handling
                if kind == "dealer":
                    self._from_backend(socket, *what, front)
                elif kind == "probe":
                    self._on_probe_reply(what)
                elif kind == "probe-monitor":
                    self._on_backend_events(what, front)
                elif kind == "front-monitor":
                    self._on_front_events(monitor)
            if self._backlogs:
                self._flush_backlogs(front)
            if front in ready:
                for _ in range(256):  # bounded, so replies keep flowing under a flood
                    incoming = self._receive(front)
                    if incoming is None:
                        break
                    self._handle(front, incoming)
            now = time.monotonic()
            self._probe_backends(now, front)
            self._finish_stats(now, front)
            if now >= next_chores:
                self._forget_idle_clients(now)
                self._reload_allow_list()
                next_chores = now + 1.0

    # -------------------------------------------------------------------------------- backends: health

    def _open_probe(self, backend: _Backend, now: float) -> None:
        probe = self._dealer_socket(backend.link)
        backend.monitor = probe.get_monitor_socket(_BACKEND_EVENTS)
        probe.connect(backend.link.address)
        backend.probe, backend.heard_at, backend.next_probe_at = probe, now, now
        self._watch(probe, "probe", backend)
        self._watch(backend.monitor, "probe-monitor", backend)

    def _close_probe(self, backend: _Backend) -> None:
        if backend.probe is None:
            return
        self._unwatch(backend.probe)
        if backend.monitor is not None:
            self._unwatch(backend.monitor)
            backend.probe.disable_monitor()
            backend.monitor.close(linger=0)
        backend.probe.close(linger=0)
        backend.probe = backend.monitor = None

    def _dealer_socket(self, link: BackendLink) -> zmq.Socket:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)  # requests to a backend that went away are answered by the proxy, not kept
        socket.setsockopt(zmq.SNDHWM, self.config.backend_hwm)
        socket.setsockopt(zmq.RCVHWM, self.config.backend_hwm)
        socket.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_frame_bytes)
        socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if "[" in link.address:
            socket.setsockopt(zmq.IPV6, 1)
        if link.curve is not None:
            socket.setsockopt(zmq.CURVE_SERVERKEY, link.curve.server_public)
            socket.setsockopt(zmq.CURVE_PUBLICKEY, link.curve.public)
            socket.setsockopt(zmq.CURVE_SECRETKEY, link.curve.secret)
        return socket

    def _probe_backends(self, now: float, front: zmq.Socket) -> None:
        timeout = self.config.probe_timeout_s
        for backend in self._backends:
            if now - backend.heard_at > timeout:
                if backend.state == "up":
                    why = f"no answer to hello for {timeout:.1f} s"
                elif backend.why.startswith("has not answered"):
                    why = f"no answer to hello within {timeout:.1f} s (is a megalive server listening there?)"
                else:
                    why = backend.why  # what the connection said (refused, a failed handshake) stays the reason
                self._backend_down(backend, why, front)
                # A fresh connection: probes queued towards a stalled process are let go, and the next try starts clean.
                self._close_probe(backend)
                self._open_probe(backend, now)
            if now >= backend.next_probe_at and backend.probe is not None:
                try:
                    backend.probe.send_multipart(
                        encode({"op": "hello", "id": next(self._probe_ids), "client": "megalive-proxy", "versions": [PROTOCOL_VERSION]}),
                        zmq.NOBLOCK,
                    )
                except zmq.Again:
                    pass  # its queue is full: it is not reading, and the timeout will say so
                backend.next_probe_at = now + self.config.probe_interval_s

    def _on_probe_reply(self, backend: _Backend) -> None:
        assert backend.probe is not None
        while True:
            try:
                frames = backend.probe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = decode(frames, self.config.limits)
            except ProtocolError as error:
                backend.why = f"its answer to hello is unreadable: {error.message}"
                continue
            if reply.op != "hello":
                backend.why = f"it answered hello with {reply.op} {reply.get('code', '')}".rstrip()
                continue
            backend.heard_at = time.monotonic()
            models = reply.get("models")
            model = models[0] if isinstance(models, list) and models and isinstance(models[0], dict) else {}
            backend.model = f"{model.get('name')} ({model.get('avatars')} avatars)"
            if backend.state != "up":
                backend.state, backend.why = "up", ""
                log.info("backend %s is up: %s", backend.link.address, backend.model)
                served = {b.model for b in self._backends if b.state == "up"}
                if len(served) > 1:
                    log.warning("the backends serve different models: %s; a session reopened elsewhere changes model", sorted(served))

    def _on_backend_events(self, backend: _Backend, front: zmq.Socket) -> None:
        assert backend.monitor is not None
        while True:
            try:
                event = parse_monitor_message(backend.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_DISCONNECTED:
                self._backend_down(backend, "its connection closed", front)
                # Start over: the next probe's answer, on a new connection, brings it back.
                backend.heard_at = time.monotonic()
            elif kind == zmq.EVENT_CONNECT_RETRIED:
                if backend.state != "up":
                    backend.why = "cannot connect (nothing listening there?)"
            else:
                hint = " (check --backend-key, and that the proxy's public key is in its allow folder)" if backend.link.curve else ""
                backend.why = f"it refused the connection's handshake{hint}"
                self._backend_down(backend, backend.why, front)

    def _backend_down(self, backend: _Backend, why: str, front: zmq.Socket) -> None:
        """The backend stopped answering: its sessions end (their clients are told unknown_session), the requests it
        owes are answered or sent to another backend, and every client's connection to it closes (so a backend that
        was only stalled frees those sessions when it wakes)."""
        if backend.state == "down":
            backend.why = why
            return
        was_up = backend.state == "up"
        backend.state, backend.why = "down", why
        if was_up:
            self.counters.backend_failures += 1
            log.warning("backend %s is down: %s; %d session(s) move", backend.link.address, why, backend.sessions)
        else:
            log.warning("backend %s: %s", backend.link.address, why)
        for client in list(self._clients.values()):
            dealer = client.dealers.pop(backend.index, None)
            if dealer is not None:
                self._unwatch(dealer)
                dealer.close(linger=0)
            for request_id, pending in list(client.pending.items()):
                if pending.backend != backend.index:
                    continue
                del client.pending[request_id]
                if pending.resend is not None:
                    self._resend(front, client, request_id, pending)
                else:
                    message = f"session {pending.session}'s server {backend.link.address} is down ({why}); open the session again"
                    self._send_front(front, client.identity, error_frames("unknown_session", message, request_id=request_id))
        for session in [s for s in self._sessions.values() if s.backend == backend.index]:
            self._end_session(session)
            self.counters.failed_over_sessions += 1
        for record in self._stats.values():
            record.asked.discard(backend.index)

    def _resend(self, front: zmq.Socket, client: _Client, request_id: int, pending: _Pending) -> None:
        """An open / hello / avatars whose backend went down before answering goes to another one."""
        assert pending.resend is not None
        backend = self._pick(for_open=pending.op == "open")
        if backend is None:
            message = f"no backend answers ({self._summary()})"
            self._send_front(front, client.identity, error_frames("busy", message, request_id=request_id))
            return
        try:
            self._dealer(client, backend).send_multipart(pending.resend, zmq.NOBLOCK)
        except zmq.Again:
            message = f"backend {backend.link.address} is not taking messages now"
            self._send_front(front, client.identity, error_frames("busy", message, request_id=request_id))
            return
        self.counters.resent += 1
        client.pending[request_id] = _Pending(op=pending.op, backend=backend.index, resend=pending.resend)

    def _pick(self, *, for_open: bool) -> _Backend | None:
        """A live backend: for a new session the one with the fewest sessions, ties in turn; else the next in turn."""
        up = [b for b in self._backends if b.state == "up"]
        if not up:
            return None
        count, turn = len(self._backends), self._turn
        self._turn += 1
        return min(up, key=lambda b: ((b.sessions if for_open else 0), (b.index - turn) % count))

    def _summary(self) -> str:
        return "; ".join(f"{b.link.address}: {b.state}{', ' + b.why if b.why else ''}" for b in self._backends)

    # -------------------------------------------------------------------------------- clients

    def _client(self, identity: bytes, now: float) -> _Client:
        client = self._clients.get(identity)
        if client is None:
            rate = self.config.max_messages_per_s
            client = self._clients[identity] = _Client(identity=identity, budget=MessageBudget(tokens=rate, refilled_at=now), last_seen=now)
        return client

    def _dealer(self, client: _Client, backend: _Backend) -> zmq.Socket:
        """This client's own connection to the backend (made on first use)."""
        dealer = client.dealers.get(backend.index)
        if dealer is None:
            dealer = self._dealer_socket(backend.link)
            dealer.connect(backend.link.address)
            client.dealers[backend.index] = dealer
            self._watch(dealer, "dealer", (client, backend))
        return dealer

    def _close_dealers(self, client: _Client) -> None:
        for dealer in client.dealers.values():
            self._unwatch(dealer)
            dealer.close(linger=0)
        client.dealers.clear()

    def _forget_client(self, identity: bytes) -> None:
        """A client left (or idled out): its connections to the backends close, so the backends close its sessions."""
        client = self._clients.pop(identity, None)
        self._backlogs.pop(identity, None)
        if client is None:
            return
        self._close_dealers(client)
        for session in [s for s in self._sessions.values() if s.client == identity]:
            self._end_session(session)
        for key in [key for key in self._stats if key[0] == identity]:
            del self._stats[key]

    def _forget_idle_clients(self, now: float) -> None:
        deadline = now - self.config.client_idle_s
        for client in [c for c in self._clients.values() if c.last_seen < deadline]:
            self.counters.idle_clients += 1
            self._forget_client(client.identity)

    def _end_session(self, session: _Session) -> None:
        self._sessions.pop(session.session_id, None)
        self._by_backend_session.pop((session.client, session.backend, session.backend_session), None)
        self._backends[session.backend].sessions -= 1

    def _on_front_events(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                for identity in self._connections.disconnected(int(event["value"])):
                    self.counters.disconnected_clients += 1
                    self._forget_client(identity)
            else:
                self.counters.curve_refused += 1

    def _reload_allow_list(self) -> None:
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

    # -------------------------------------------------------------------------------- requests

    def _receive(self, front: zmq.Socket) -> Incoming | None:
        """One message, read frame by frame: frames past the part or byte limit are let go as they are read."""
        try:
            identity = front.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        now = time.monotonic()
        client = self._client(identity.bytes, now)
        client.last_seen = now
        incoming = Incoming(peer=identity.bytes, frames=[], shed=not self._spend_message(client, now))
        limits, total = self.config.limits, 0
        while front.getsockopt(zmq.RCVMORE):
            frame = front.recv(copy=False)
            total += len(frame.buffer)
            if incoming.oversized or incoming.shed:
                continue
            if len(incoming.frames) >= limits.max_parts or total > limits.max_message_bytes:
                incoming.oversized = True
                del incoming.frames[1:]
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
                    self._forget_client(gone)
            if self.config.curve is not None:
                # pyzmq's authenticator names a CURVE client by its public key (Z85).
                client.curve_key = str(first.get("User-Id"))
        return incoming

    def _spend_message(self, client: _Client, now: float) -> bool:
        rate, budget = self.config.max_messages_per_s, client.budget
        budget.tokens = min(rate, budget.tokens + (now - budget.refilled_at) * rate)
        budget.refilled_at = now
        if budget.tokens < 1.0:
            return False
        budget.tokens -= 1.0
        return True

    def _handle(self, front: zmq.Socket, incoming: Incoming) -> None:
        if incoming.shed:
            self.counters.shed_messages += 1
            return
        client = self._client(incoming.peer, time.monotonic())
        request_id: int | None = None
        try:
            if incoming.oversized:
                self.counters.oversized += 1
                limits = self.config.limits
                raise ProtocolError("too_large", f"a message holds at most {limits.max_parts} frames and {limits.max_message_bytes} bytes")
            request = decode([frame.buffer for frame in incoming.frames], self.config.limits)
            request_id = request.request_id
            op = request.op
            if op in ("frame", "close"):
                self._to_session(client, op, request_id, require(request, "session", int), incoming.frames)
            elif op in ("open", "hello", "avatars"):
                backend = self._pick(for_open=op == "open")
                if backend is None:
                    raise ProtocolError("busy", f"no backend answers ({self._summary()})", request_id=request_id)
                resend = [bytes(frame.buffer) for frame in incoming.frames]  # a header alone: small
                self._forward(client, backend, request_id, resend, _Pending(op=op, backend=backend.index, resend=resend))
            elif op == "stats":
                self._fan_out_stats(front, client, request_id)
            elif op in ("enroll", "cancel_refinement"):
                raise ProtocolError("bad_request", ENROLL_REFUSED, request_id=request_id)
            else:
                raise ProtocolError("bad_request", f"{op!r} is a reply, not a request", request_id=request_id)
        except ProtocolError as error:
            self.counters.rejected += 1
            rid = error.request_id if error.request_id is not None else _header_id(incoming.frames)
            self._send_front(front, client.identity, error_frames(error.code, error.message, request_id=rid))

    def _to_session(self, client: _Client, op: str, request_id: int, session_id: int, frames: list[zmq.Frame]) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.client != client.identity:
            raise ProtocolError(
                "unknown_session",
                f"no session {session_id} of this client (closed, expired, or its server went down)",
                request_id=request_id,
            )
        header = unpack_header(frames[0].buffer, self.config.limits)
        header["session"] = session.backend_session  # the backend's own number for it
        out = [msgpack.packb(header, use_bin_type=True), *frames[1:]]
        backend = self._backends[session.backend]
        self._forward(client, backend, request_id, out, _Pending(op=op, backend=backend.index, session=session_id))

    def _forward(self, client: _Client, backend: _Backend, request_id: int, frames: list, pending: _Pending) -> None:
        if len(client.pending) >= self.config.max_pending_per_client:
            raise ProtocolError(
                "busy", f"this client has {self.config.max_pending_per_client} requests awaiting an answer", request_id=request_id
            )
        try:
            self._dealer(client, backend).send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise ProtocolError("busy", f"backend {backend.link.address} is not taking messages now", request_id=request_id) from None
        self.counters.forwarded += 1
        client.pending[request_id] = pending

    # -------------------------------------------------------------------------------- replies

    def _from_backend(self, dealer: zmq.Socket, client: _Client, backend: _Backend, front: zmq.Socket) -> None:
        for _ in range(256):
            if client.dealers.get(backend.index) is not dealer:
                return  # closed while this batch was read (its backend went down, or the client left)
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._relay(front, client, backend, frames)

    def _relay(self, front: zmq.Socket, client: _Client, backend: _Backend, frames: list[zmq.Frame]) -> None:
        try:
            header = unpack_header(frames[0].buffer, self.config.limits)
        except ProtocolError:
            self.counters.bad_replies += 1
            return
        op, request_id, backend_session = header.get("op"), _integer(header.get("id")), _integer(header.get("session"))
        if op == "stats" and (client.identity, request_id) in self._stats:
            record = self._stats[(client.identity, request_id)]
            if backend.index in record.asked:
                record.replies[backend.index] = header
            return
        pending = client.pending.get(request_id) if request_id is not None else None
        if pending is not None and pending.backend == backend.index:
            del client.pending[request_id]  # type: ignore[arg-type]
        else:
            pending = None
        if op == "open" and backend_session is not None:
            session = _Session(
                session_id=next(self._session_ids), client=client.identity, backend=backend.index, backend_session=backend_session
            )
            self._sessions[session.session_id] = session
            self._by_backend_session[(client.identity, backend.index, backend_session)] = session.session_id
            backend.sessions += 1
            header["session"] = session.session_id
        elif op in ("texture", "dropped", "close"):
            session_id = self._by_backend_session.get((client.identity, backend.index, backend_session))  # type: ignore[arg-type]
            if session_id is None:
                self.counters.late_replies += 1  # its session ended with a backend that went down: the client was told
                return
            header["session"] = session_id
            if op == "close":
                self._end_session(self._sessions[session_id])
        elif op == "error" and header.get("code") == "unknown_session" and pending is not None and pending.session is not None:
            lost = self._sessions.get(pending.session)
            if lost is not None:
                self._end_session(lost)  # the backend no longer holds it (idled out, restarted): the client reopens
        elif op == "hello":
            capabilities = header.get("capabilities")
            if isinstance(capabilities, dict):
                capabilities["enroll"] = {"available": False, "why": ENROLL_REFUSED}
            header["proxy"] = {"backends": len(self._backends), "up": sum(b.state == "up" for b in self._backends)}
        self._send_front(front, client.identity, [msgpack.packb(header, use_bin_type=True), *frames[1:]])

    def _fan_out_stats(self, front: zmq.Socket, client: _Client, request_id: int) -> None:
        key = (client.identity, request_id)
        if key in self._stats:
            raise ProtocolError("bad_request", f"a stats request with id {request_id} is already waiting", request_id=request_id)
        record = _StatsRequest(client=client.identity, request_id=request_id, deadline=time.monotonic() + self.config.probe_timeout_s)
        asking = encode({"op": "stats", "id": request_id})
        for backend in self._backends:
            if backend.state != "up":
                continue
            try:
                self._dealer(client, backend).send_multipart(asking, zmq.NOBLOCK)
            except zmq.Again:
                continue
            record.asked.add(backend.index)
        self._stats[key] = record

    def _finish_stats(self, now: float, front: zmq.Socket) -> None:
        for key, record in list(self._stats.items()):
            if record.asked <= set(record.replies) or now >= record.deadline:
                del self._stats[key]
                self._send_front(front, record.client, encode(self._stats_reply(record)))

    def _stats_reply(self, record: _StatsRequest) -> dict[str, Any]:
        client = self._clients.get(record.client)
        sessions: list[dict[str, Any]] = []
        others = dict.fromkeys(("sessions", *COUNTER_NAMES), 0)
        server_sums: collections.Counter[str] = collections.Counter()
        watermarks: set[str] = set()
        engines: list[dict[str, Any]] = []
        backends = []
        for backend in self._backends:
            entry: dict[str, Any] = {
                "address": backend.link.address,
                "state": backend.state,
                "why": backend.why,
                "sessions": backend.sessions,
                "model": backend.model,
                "answered": backend.index in record.replies,
            }
            reply = record.replies.get(backend.index)
            if reply is not None:
                for listed in _maps(reply.get("sessions")):
                    key = (record.client, backend.index, _integer(listed.get("session")))
                    session_id = self._by_backend_session.get(key)  # type: ignore[arg-type]
                    if session_id is not None:
                        sessions.append({**listed, "session": session_id, "backend": backend.link.address})
                other = reply.get("other_clients") if isinstance(reply.get("other_clients"), dict) else {}
                for name in others:
                    others[name] += _count(other.get(name))
                server = reply.get("server") if isinstance(reply.get("server"), dict) else {}
                server_sums.update({name: _count(value) for name, value in server.items() if name != "watermark"})
                if isinstance(server.get("watermark"), str):
                    watermarks.add(server["watermark"])
                engine = reply.get("engine") if isinstance(reply.get("engine"), dict) else {}
                engines.append(engine)
                entry.update(server=server, engine=engine, other_clients=other)
            backends.append(entry)
        watermark = watermarks.pop() if len(watermarks) == 1 else ("mixed" if watermarks else "unknown")
        return {
            "op": "stats",
            "id": record.request_id,
            "client": {"curve_key": client.curve_key if client is not None else None},
            "sessions": sessions,
            "other_clients": others,
            "engine": _merged_engines(engines),
            "refinement": {"available": False, "why": ENROLL_REFUSED},
            "server": {**server_sums, "watermark": watermark, "proxy": self.counters.as_dict(), "backends": backends},
        }

    # -------------------------------------------------------------------------------- sending to clients

    def _send_front(self, front: zmq.Socket, identity: bytes, frames: list) -> None:
        """As the server sends: at once, or into the client's small backlog; a texture with no room becomes `dropped`."""
        overflowed, error = send_or_hold(front, identity, frames, self._backlogs, limit_bytes=self.config.backlog_bytes_per_client)
        self.counters.reply_overflow += overflowed
        if error is not None:
            self._unroutable(identity, error)

    def _flush_backlogs(self, front: zmq.Socket) -> None:
        for identity, error in flush_backlogs(front, self._backlogs):
            self._unroutable(identity, error)

    def _unroutable(self, identity: bytes, error: zmq.ZMQError) -> None:
        if error.errno != zmq.EHOSTUNREACH:
            raise error
        self.counters.unroutable += 1
        self._forget_client(identity)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _header_id(frames: list[zmq.Frame]) -> int | None:
    """Best-effort request id of a message that failed validation (to answer it by)."""
    try:
        header = unpack_header(frames[0].buffer) if frames else {}
    except ProtocolError:
        return None
    return _integer(header.get("id"))


def _maps(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _count(value: Any) -> int:
    """A counter from a backend's reply (anything else counts 0)."""
    return _integer(value) or 0


def _merged_engines(engines: list[dict[str, Any]]) -> dict[str, Any]:
    """The backends' engine figures as one: calls and frames summed, means weighted by calls."""
    runs = sum(_count(e.get("runs")) for e in engines)
    frames = sum(_count(e.get("frames")) for e in engines)
    infer_ms = sum(
        _count(e.get("runs")) * float(e.get("mean_infer_ms") or 0.0) for e in engines if isinstance(e.get("mean_infer_ms"), float)
    )
    failures = [e.get("last_failure") for e in engines if e.get("last_failure")]
    return {
        "runs": runs,
        "frames": frames,
        "mean_batch": frames / runs if runs else 0.0,
        "mean_infer_ms": infer_ms / runs if runs else 0.0,
        "alive": bool(engines) and all(e.get("alive") is True for e in engines),
        "restarts": sum(_count(e.get("restarts")) for e in engines),
        "last_failure": failures[0] if failures else None,
        "backends": len(engines),
    }
