"""Live Link Face take files: TakeWriter and its size cap, read_take, replay_take (unreal_bridge/livelink/take.py)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from tests.unreal_bridge.livelink_helpers import LOOPBACK, make_packet, poll_until
from unreal_bridge.livelink.receiver import LiveLinkFaceReceiver
from unreal_bridge.livelink.take import TAKE_MAGIC, TakeWriter, read_take, replay_take


def write_take(path: Path, records: list[tuple[float, bytes]]) -> Path:
    with TakeWriter(path) as writer:
        for at, packet in records:
            writer.write(packet, at)
    return path


RECORDS = [
    (0.0, make_packet("a", 1)),
    (0.1, make_packet("a", 2)),
    (0.25, b""),  # raw datagrams are recorded as received, even empty or malformed ones
    (1.0, make_packet("Ана 🎭", 3, device_id="x" * 100)),
]


def test_take_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "take.llf"
    writer = TakeWriter(path)
    assert writer.partial_path.exists() and not path.exists()  # never half-written under NAME
    for at, packet in RECORDS:
        writer.write(packet, at)
    assert writer.close() == path
    assert path.exists() and not writer.partial_path.exists()
    assert path.read_bytes().startswith(TAKE_MAGIC)
    assert list(read_take(path)) == RECORDS
    with pytest.raises(ValueError):
        writer.write(b"late", 2.0)


def test_take_writer_uses_its_clock(tmp_path: Path) -> None:
    readings = iter([100.0, 100.5, 102.0])
    with TakeWriter(tmp_path / "t.llf", clock=lambda: next(readings)) as writer:
        writer.write(b"one")
        writer.write(b"two")
    assert list(read_take(tmp_path / "t.llf")) == [(0.5, b"one"), (2.0, b"two")]


def test_take_interrupted_by_an_exception_stays_partial(tmp_path: Path) -> None:
    path = tmp_path / "take.llf"
    with pytest.raises(RuntimeError):
        with TakeWriter(path) as writer:
            writer.write(b"kept", 0.0)
            raise RuntimeError("crash")
    assert not path.exists()
    assert list(read_take(writer.partial_path)) == [(0.0, b"kept")]


def test_take_writer_stops_at_its_size_cap(tmp_path: Path) -> None:
    """A flood cannot fill the disk: past max_bytes nothing is written, later packets are refused
    (even ones that would still fit, so the take has no gaps) and counted."""
    path = tmp_path / "take.llf"
    packet = make_packet("face", 1)
    record_size = 12 + len(packet)
    cap = len(TAKE_MAGIC) + 3 * record_size + 11
    writer = TakeWriter(path, max_bytes=cap)
    assert writer.max_bytes == cap and not writer.full
    assert [writer.write(packet, 0.1 * index) for index in range(5)] == [True, True, True, False, False]
    assert writer.write(b"", 1.0) is False  # 12 bytes would fit; still refused once full
    assert writer.full and writer.records == 3 and writer.refused == 3
    assert writer.bytes_written == len(TAKE_MAGIC) + 3 * record_size == writer.partial_path.stat().st_size
    writer.close()
    assert path.stat().st_size <= cap
    assert list(read_take(path, strict=True)) == [(0.1 * index, packet) for index in range(3)]


def test_take_writer_has_a_default_cap_and_rejects_a_cap_below_its_header(tmp_path: Path) -> None:
    from unreal_bridge.livelink.take import DEFAULT_TAKE_MAX_BYTES

    with TakeWriter(tmp_path / "a.llf") as writer:
        assert writer.max_bytes == DEFAULT_TAKE_MAX_BYTES == 256_000_000
    with pytest.raises(ValueError, match="max_bytes"):
        TakeWriter(tmp_path / "b.llf", max_bytes=len(TAKE_MAGIC) - 1)
    assert not (tmp_path / "b.llf.partial").exists()
    with TakeWriter(tmp_path / "c.llf", max_bytes=len(TAKE_MAGIC)) as writer:
        assert writer.write(b"", 0.0) is False
    assert list(read_take(tmp_path / "c.llf", strict=True)) == []


def test_take_writer_never_overwrites_an_interrupted_take(tmp_path: Path) -> None:
    """A crashed recording leaves NAME.partial; a new recording to NAME must not truncate it."""
    path = tmp_path / "take.llf"
    with pytest.raises(RuntimeError):
        with TakeWriter(path) as crashed:
            crashed.write(b"precious", 0.0)
            raise RuntimeError("crash")
    before = crashed.partial_path.read_bytes()
    with pytest.raises(FileExistsError, match="interrupted take"):
        TakeWriter(path)
    assert crashed.partial_path.read_bytes() == before
    assert list(read_take(crashed.partial_path)) == [(0.0, b"precious")]


def test_take_writer_discard_removes_the_partial_file(tmp_path: Path) -> None:
    writer = TakeWriter(tmp_path / "take.llf")
    writer.discard()
    assert list(tmp_path.iterdir()) == [] and writer.closed
    writer.discard()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"late", 0.0)


def test_truncated_take_replays_complete_records(tmp_path: Path) -> None:
    data = write_take(tmp_path / "full.llf", RECORDS).read_bytes()
    last_record_size = 12 + len(RECORDS[-1][1])
    for cut in range(1, last_record_size):  # every cut inside the final record
        path = tmp_path / "cut.llf"
        path.write_bytes(data[:-cut])
        assert list(read_take(path)) == RECORDS[:-1]
        with pytest.raises(ValueError, match="truncated"):
            list(read_take(path, strict=True))
    header_only = tmp_path / "empty.llf"
    header_only.write_bytes(TAKE_MAGIC)
    assert list(read_take(header_only, strict=True)) == []


@pytest.mark.parametrize("content", [b"", b"MEGALIVE-LLF-TAKE 2\n", b"hello world, not a take"])
def test_take_bad_magic(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.llf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="magic"):
        list(read_take(path))


def test_take_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.llf"
    path.write_bytes(TAKE_MAGIC + struct.pack(">dI", 0.0, 2**31) + b"x" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        list(read_take(path))
    path.write_bytes(TAKE_MAGIC + struct.pack(">dI", math.nan, 1) + b"x")
    with pytest.raises(ValueError, match="corrupt"):
        list(read_take(path))


class FakeTime:
    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_replay_sends_at_recorded_times(tmp_path: Path, speed: float) -> None:
    path = write_take(tmp_path / "take.llf", RECORDS)
    fake = FakeTime()
    sends: list[tuple[float, bytes]] = []
    count = replay_take(
        path,
        address=(LOOPBACK, 9),
        speed=speed,
        sleep=fake.sleep,
        clock=fake.clock,
        send=lambda packet: sends.append((fake.now - 50.0, packet)),
    )
    assert count == len(RECORDS)
    assert [packet for _, packet in sends] == [packet for _, packet in RECORDS]
    for (sent_at, _), (recorded_at, _) in zip(sends, RECORDS):
        assert sent_at == pytest.approx(recorded_at / speed)


def test_replay_does_not_accumulate_send_overhead(tmp_path: Path) -> None:
    path = write_take(tmp_path / "take.llf", [(0.1 * index, b"p") for index in range(10)])
    fake = FakeTime()
    sends: list[float] = []

    def slow_send(packet: bytes) -> None:
        sends.append(fake.now - 50.0)
        fake.now += 0.03  # each send costs time; the schedule absorbs it

    replay_take(path, address=(LOOPBACK, 9), sleep=fake.sleep, clock=fake.clock, send=slow_send)
    assert sends == pytest.approx([0.1 * index for index in range(10)])


def test_replay_rejects_bad_speed(tmp_path: Path) -> None:
    path = write_take(tmp_path / "take.llf", RECORDS)
    for speed in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            replay_take(path, address=(LOOPBACK, 9), speed=speed, send=lambda packet: None)


def test_replay_over_udp_reaches_the_receiver(tmp_path: Path) -> None:
    records = [(0.001 * index, make_packet("replayed", index)) for index in range(20)]
    path = write_take(tmp_path / "take.llf", records)
    with LiveLinkFaceReceiver(bind_address=LOOPBACK, port=0) as receiver:
        assert replay_take(path, address=(LOOPBACK, receiver.port), speed=math.inf) == 20
        poll_until(receiver, lambda: receiver.stats().received == 20)
        assert receiver.latest("replayed").time.frame == 19
