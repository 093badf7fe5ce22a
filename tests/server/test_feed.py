"""The texture feed's publisher (server/feed.py) with real subscribers on loopback: fan-out, a node that
never reads, the server's bind rules and CURVE keys. Counts only, never times."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from client.client import load_curve_client_keys
from client.feed import TextureSubscriber, decode_feed_message
from client.protocol import raw_buffer_from_array
from server.feed import FeedStartError, PublisherConfig, TexturePublisher, open_texture_publisher


def wait_for_subscribers(publisher: TexturePublisher, count: int) -> None:
    deadline = time.monotonic() + 10
    while publisher.poll_subscribers() < count:
        assert time.monotonic() < deadline, publisher.subscribers
        time.sleep(0.01)


def never_reading_node(address: str) -> zmq.Socket:
    """A render node that stopped reading. A small kernel receive buffer makes it fall behind after a few
    textures rather than after tens of megabytes; the publisher's side is what is under test."""
    node = zmq.Context.instance().socket(zmq.SUB)
    node.setsockopt(zmq.LINGER, 0)
    node.setsockopt(zmq.RCVHWM, 2)
    node.setsockopt(zmq.RCVBUF, 32 * 1024)
    node.setsockopt(zmq.SUBSCRIBE, b"")
    node.connect(address)
    return node


def drain(node: zmq.Socket) -> list[int]:
    """The seqs of every message the node holds, read until nothing more comes for 0.5 s."""
    seqs = []
    while node.poll(500):
        seqs.append(decode_feed_message(node.recv_multipart()).seq)
    return seqs


def test_one_publisher_feeds_every_reading_node_while_a_node_that_never_reads_loses_only_its_own_copies() -> None:
    """Lockstep: texture n+1 is published once both readers hold texture n. A publisher that waited for the
    stalled node would stop the lockstep (the test would fail on its deadline); a copy the readers lost
    would show as a gap in their seqs."""
    textures = [np.full((256, 256, 4), seq, np.uint8) for seq in range(4)]  # 256 KB each
    published = 120
    with TexturePublisher(config=PublisherConfig(bind="tcp://127.0.0.1:*")) as publisher:
        readers = [TextureSubscriber(address=publisher.address) for _ in range(2)]
        stalled = never_reading_node(publisher.address)
        wait_for_subscribers(publisher, 3)
        seen: list[list[int]] = [[], []]
        for seq in range(published):
            assert publisher.publish(raw_buffer_from_array(textures[seq % 4]), seq=seq, source_seq=seq, avatar=0)
            for reader, seqs in zip(readers, seen):
                frame = reader.wait_for_frame(10.0)
                assert frame is not None, (f"a reader lost texture {seq}", reader.counters, reader.problem, publisher.poll_subscribers())
                assert frame.array()[0, 0, 0] == seq % 4
                seqs.append(frame.seq)
        assert publisher.counters.published == published and publisher.counters.refused == 0
        assert seen == [list(range(published))] * 2  # every texture, in order, to both readers
        for reader in readers:
            assert reader.counters.missed == 0 and reader.counters.malformed == 0
            reader.close()
        got = drain(stalled)
        stalled.close()
        assert 0 < len(got) < published // 2  # its queue filled and the rest of its copies were dropped
        assert got == sorted(got)


def test_subscriber_count_follows_nodes_that_come_and_go() -> None:
    with TexturePublisher(config=PublisherConfig(bind="tcp://127.0.0.1:*")) as publisher:
        nodes = [TextureSubscriber(address=publisher.address) for _ in range(3)]
        wait_for_subscribers(publisher, 3)
        nodes.pop().close()
        deadline = time.monotonic() + 10
        while publisher.poll_subscribers() != 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for node in nodes:
            node.close()


def test_the_feed_binds_loopback_without_keys_and_nothing_else() -> None:
    with pytest.raises(FeedStartError) as refused:
        open_texture_publisher(bind="tcp://0.0.0.0:*")
    message = str(refused.value)
    assert "without CURVE keys" in message and "--publish-curve-secret FILE --publish-allow DIR" in message and "\n" not in message
    with open_texture_publisher(bind="tcp://127.0.0.1:*") as first:
        with pytest.raises(FeedStartError, match="already in use"):
            open_texture_publisher(bind=first.address)
    with pytest.raises(FeedStartError, match="go together"):
        open_texture_publisher(bind="tcp://127.0.0.1:*", curve_secret=Path("relay.key_secret"))


def curve_files(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(relay public, relay secret, allow folder, allowed node's secret) as `megalive keys new` writes them."""
    allow = tmp_path / "allow"
    allow.mkdir()
    relay_public, relay_secret = zmq.auth.create_certificates(str(tmp_path), "relay")
    _, node_secret = zmq.auth.create_certificates(str(allow), "node")
    Path(relay_secret).chmod(0o600)
    return Path(relay_public), Path(relay_secret), allow, Path(node_secret)


def test_a_curve_feed_reaches_allowed_nodes_only(tmp_path: Path) -> None:
    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CURVE")
    relay_public, relay_secret, allow, node_secret = curve_files(tmp_path)
    stranger_public, stranger_secret = zmq.auth.create_certificates(str(tmp_path), "stranger")
    with pytest.raises(FeedStartError, match="bad CURVE key for publishing"):
        open_texture_publisher(bind="tcp://127.0.0.1:*", curve_secret=relay_public, allow=allow)  # a public key is no secret
    pixels = np.arange(8 * 8 * 4, dtype=np.uint8).reshape(8, 8, 4)
    # Any host may be bound with keys (0.0.0.0 here; the nodes connect over loopback).
    with open_texture_publisher(bind="tcp://0.0.0.0:*", curve_secret=relay_secret, allow=allow) as publisher:
        address = publisher.address.replace("0.0.0.0", "127.0.0.1")
        allowed = TextureSubscriber(
            address=address, curve=load_curve_client_keys(server_public_key=relay_public, client_secret_key=node_secret)
        )
        stranger = TextureSubscriber(
            address=address, curve=load_curve_client_keys(server_public_key=relay_public, client_secret_key=stranger_secret)
        )
        plain = TextureSubscriber(address=address)
        wait_for_subscribers(publisher, 1)
        frame, seq = None, 0
        deadline = time.monotonic() + 10
        while frame is None or stranger.problem is None or plain.problem is None:
            assert time.monotonic() < deadline, (stranger.problem, plain.problem)
            publisher.publish(raw_buffer_from_array(pixels), seq=seq, source_seq=seq, avatar=0)
            seq += 1
            frame = allowed.receive_latest(timeout_ms=20) or frame
            assert stranger.receive_latest(timeout_ms=0) is None and plain.receive_latest(timeout_ms=0) is None
        assert np.array_equal(frame.array(), pixels)
        assert "not on its allow-list" in stranger.problem and "require" in plain.problem and "CURVE" in plain.problem
        assert publisher.poll_subscribers() == 1  # only the allowed node ever subscribed
        for node in (allowed, stranger, plain):
            node.close()
