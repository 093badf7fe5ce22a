"""Live Link Face UDP receiver on loopback (unreal_bridge/livelink/receiver.py)."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.unreal_bridge.livelink_helpers import LOOPBACK, build_packet, make_packet, poll_until
from unreal_bridge.livelink.receiver import LiveLinkFaceReceiver
from unreal_bridge.livelink.take import TakeWriter, read_take


@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def test_receiver_binds_an_ephemeral_port_and_closes() -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        assert receiver.port > 0 and not receiver.closed and receiver.fileno() >= 0
        assert receiver.poll() == 0  # nothing queued: returns at once
        assert receiver.latest() is None and receiver.subjects() == ()
    assert receiver.closed and receiver.poll() == 0 and receiver.fileno() == -1
    receiver.close()  # idempotent


def test_receiver_binds_loopback_by_default() -> None:
    """Every interface is opt-in (a phone on the LAN): by default nobody else on the network can send curves."""
    with LiveLinkFaceReceiver(port=0) as receiver:
        assert receiver.bind_address == LOOPBACK
        with socket.socket(fileno=socket.dup(receiver.fileno())) as view:
            assert view.getsockname() == (LOOPBACK, receiver.port)


@pytest.mark.parametrize("second_address", [LOOPBACK, "0.0.0.0"])
def test_a_second_receiver_on_a_port_fails_at_once(sender: socket.socket, second_address: str) -> None:
    """No SO_REUSEADDR: two receivers used to share a port and one of them silently got nothing."""
    import errno

    from unreal_bridge.livelink.receiver import PortInUseError

    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as first:
        with pytest.raises(PortInUseError) as error:
            LiveLinkFaceReceiver(bind_address=second_address, port=first.port)
        assert isinstance(error.value, OSError) and error.value.errno == errno.EADDRINUSE
        assert error.value.port == first.port
        assert str(error.value).startswith(f"UDP port {first.port} is already in use")
        assert "\n" not in str(error.value)
        sender.sendto(make_packet("face", 7), (LOOPBACK, first.port))
        poll_until(first, lambda: first.latest("face") is not None)  # the first one keeps receiving
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=first.port) as again:  # free once closed
        assert again.port == first.port


def test_receiver_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=0)
    with pytest.raises(ValueError):
        LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_subjects=0)


def test_receiver_counts_garbage_by_reason_and_never_raises(sender: socket.socket) -> None:
    good = make_packet("face", 1)
    garbage = {
        "short": [b"", b"\x06", good[:100], good[:-1]],
        "version": [b"\x05" + good[1:], b"\xff"],
        "count": [build_packet(values=(0.0,) * 60)],
        "trailing": [good + b"\x00"],
        "utf8": [build_packet(subject=b"\xff")],
        "length": [build_packet(device_id_length=-5), build_packet(subject_length=10**6)],
    }
    datagrams = [packet for packets in garbage.values() for packet in packets]
    datagrams.insert(3, good)
    datagrams.append(make_packet("face", 2))
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        for datagram in datagrams:
            sender.sendto(datagram, (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == len(datagrams))
        stats = receiver.stats()
        assert stats.accepted == 2 and stats.malformed == len(datagrams) - 2
        assert dict(stats.malformed_by_reason) == {reason: len(packets) for reason, packets in garbage.items()}
        assert receiver.latest("face").time.frame == 2
        assert receiver.subjects() == ("face",)


def test_receiver_keeps_newest_frame_per_subject(sender: socket.socket) -> None:
    total = 1000
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        address = (LOOPBACK, receiver.port)
        for number in range(total):
            subject = "Left" if number % 2 == 0 else "Right"
            sender.sendto(make_packet(subject, number), address)
            if number % 50 == 49:  # keep well inside the socket buffer
                receiver.poll()
        poll_until(receiver, lambda: receiver.stats().received >= total)
        stats = receiver.stats()
        assert stats.received == total and stats.accepted == total and stats.malformed == 0
        assert receiver.subjects() == ("Left", "Right")
        assert receiver.latest("Left").time.frame == total - 2
        assert receiver.latest("Right").time.frame == total - 1
        assert receiver.latest().time.frame == total - 1
        assert receiver.latest("Nobody") is None
        receiver.forget("Right")
        assert receiver.subjects() == ("Left",) and receiver.latest() is None


def test_receiver_subject_table_is_bounded(sender: socket.socket) -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_subjects=3) as receiver:
        for index in range(5):
            sender.sendto(make_packet(f"s{index}", index), (LOOPBACK, receiver.port))
        sender.sendto(make_packet("s0", 99), (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == 6)
        assert receiver.subjects() == ("s0", "s1", "s2")
        assert receiver.stats().dropped_subjects == 2
        assert receiver.latest("s0").time.frame == 99 and receiver.latest("s4") is None


def test_poll_reads_at_most_max_packets_per_call(sender: socket.socket) -> None:
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=64) as receiver:
        for number in range(200):  # loopback queues each datagram before sendto returns
            packet = make_packet("face", number) if number % 3 else b"junk"
            sender.sendto(packet, (LOOPBACK, receiver.port))
        per_poll = [receiver.poll()]
        per_poll += poll_until(receiver, lambda: receiver.stats().received == 200)
        assert per_poll[0] == 64  # a deep queue is read 64 datagrams at a time, not drained
        assert max(per_poll) == 64 and sum(per_poll) == 200
        assert receiver.stats().received == 200 and receiver.poll() == 0
        assert receiver.latest("face").time.frame == 199


def test_receiver_flood_costs_bounded_work_per_poll(sender: socket.socket) -> None:
    cap_per_poll, cap_subjects = 64, 8
    rng = random.Random(1234)
    flood: list[bytes] = []
    for index in range(512):  # random subjects, mixed with garbage
        if index % 4 == 3:
            flood.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))))
        else:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12))
            flood.append(make_packet(name, index))

    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, max_packets_per_poll=cap_per_poll, max_subjects=cap_subjects) as receiver:
        address = (LOOPBACK, receiver.port)
        sender.sendto(make_packet("good", 0), address)
        poll_until(receiver, lambda: receiver.latest("good") is not None)

        sent = 0

        def blast() -> None:
            nonlocal sent
            flood_sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stop_at = time.monotonic() + 1.0
            try:
                while sent < 100_000 and (sent % 256 or time.monotonic() < stop_at):
                    flood_sender.sendto(flood[sent % len(flood)], address)
                    sent += 1
            finally:
                flood_sender.close()

        thread = threading.Thread(target=blast, daemon=True)
        thread.start()
        per_poll: list[int] = []
        while thread.is_alive() or (per_poll and per_poll[-1] > 0):
            before = receiver.stats().received
            processed = receiver.poll()
            assert receiver.stats().received - before == processed  # count, don't time
            assert processed <= cap_per_poll
            assert len(receiver.subjects()) <= cap_subjects
            per_poll.append(processed)
            time.sleep(0.005)  # the caller's other work (an editor tick): lets a backlog build
        thread.join()

        assert sent > 0 and max(per_poll) == cap_per_poll  # the bound was actually exercised
        stats = receiver.stats()
        assert stats.subjects <= cap_subjects and stats.dropped_subjects > 0
        assert stats.malformed > 0 and stats.received <= sent + 1

        sender.sendto(make_packet("good", 10**6), address)
        poll_until(receiver, lambda: receiver.latest("good").time.frame == 10**6)
        assert "good" in receiver.subjects()


def test_receiver_feeds_raw_datagrams_to_a_take_writer(tmp_path: Path, sender: socket.socket) -> None:
    clock = iter([0.0, 0.5, 1.25])  # writer start, then one reading per packet
    writer = TakeWriter(tmp_path / "take.llf", clock=lambda: next(clock))
    packets = [make_packet("face", 1), b"garbage"]
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0, on_datagram=writer.write) as receiver:
        for packet in packets:
            sender.sendto(packet, (LOOPBACK, receiver.port))
        poll_until(receiver, lambda: receiver.stats().received == 2)
    writer.close()
    assert list(read_take(tmp_path / "take.llf")) == [(0.5, packets[0]), (1.25, packets[1])]
