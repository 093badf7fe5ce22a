"""Flow bookkeeping without sockets: which client a disconnect event (a bare socket descriptor) closes."""

from __future__ import annotations

from server.flow import ConnectionTable


def test_a_disconnect_closes_the_client_on_that_descriptor() -> None:
    table = ConnectionTable()
    assert table.register(b"a", 12) == [] and table.register(b"b", 13) == []
    assert table.disconnected(12) == [b"a"]
    assert b"a" not in table and b"b" in table
    assert table.disconnected(12) == []  # nothing left on it


def test_a_reused_descriptor_does_not_close_the_new_client() -> None:
    """The OS gives a new connection the descriptor of one just closed, and the monitor's DISCONNECTED event for the
    old one can arrive after the new client's first message: it must close the old client, never the new one."""
    table = ConnectionTable()
    table.register(b"old", 12)
    assert table.register(b"new", 12) == [b"old"]  # the old client must have left: reported at once
    assert table.disconnected(12) == []  # the old client's late event: skipped
    assert b"new" in table
    assert table.disconnected(12) == [b"new"]  # the new client's own event


def test_a_disconnect_that_came_first_owes_nothing() -> None:
    table = ConnectionTable()
    table.register(b"old", 12)
    assert table.disconnected(12) == [b"old"]  # in order: the event before the new client's message
    assert table.register(b"new", 12) == []
    assert table.disconnected(12) == [b"new"]
