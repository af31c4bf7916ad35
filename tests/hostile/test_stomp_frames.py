"""Hostile names and headers never shape a STOMP frame (no broker: a recording connection).

A recipe names its queues, and another producer's message brings its own headers, which
zbatch copies when it requeues, dead-letters or replays the message. ActiveMQ reads ',' in a
destination as several queues and '*'/'>' as wildcards; stomp.py escapes header values but
not names; and AMQ_SCHEDULED_* headers are orders to the broker. None of it may pass.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER, Outgoing
from zbatch.transport.stomp import SAFE_NAME, StompTransport, unroutable
from zbatch.transport.stomp_settings import StompSettings


@dataclass
class RecordingConnection:
    """stomp.py's Connection12 as StompTransport uses it; every receipt is answered."""

    owner: StompTransport
    frames: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def is_connected(self) -> bool:
        return True

    def _answer(self, headers: dict[str, Any] | None) -> None:
        if headers and "receipt" in headers:
            self.owner._on_receipt(headers["receipt"], None)

    def send(self, destination: str, body: bytes, headers: dict[str, Any]) -> None:
        self.frames.append(("SEND", {"destination": destination, "body": body, **headers}))
        self._answer(headers)

    def begin(self, transaction: str) -> None:
        self.frames.append(("BEGIN", {"transaction": transaction}))

    def ack(self, ack_id: str, transaction: str | None = None) -> None:
        self.frames.append(("ACK", {"id": ack_id, "transaction": transaction}))

    def commit(self, transaction: str, headers: dict[str, Any]) -> None:
        self.frames.append(("COMMIT", {"transaction": transaction, **headers}))
        self._answer(headers)

    def subscribe(self, destination: str, sub_id: str, ack: str, headers: Any) -> None:
        self.frames.append(("SUBSCRIBE", {"destination": destination, "id": sub_id, "ack": ack}))
        assert headers == {"activemq.prefetchSize": "1"}

    def deliver(self, headers: dict[str, str], body: bytes = b"{}") -> None:
        """The broker sends one message to the subscription made last."""
        sub = [f for f in self.frames if f[0] == "SUBSCRIBE"][-1][1]
        frame_headers = {
            **headers,
            "subscription": sub["id"],
            "message-id": f"m{next(self.ids)}",
            "destination": sub["destination"],
        }
        self.owner._on_message(
            self.owner._generation, SimpleNamespace(headers=frame_headers, body=body)
        )

    def disconnect(self) -> None:
        pass


def offline_transport() -> tuple[StompTransport, RecordingConnection]:
    transport = StompTransport(StompSettings(prefix="zocalo"))
    conn = RecordingConnection(transport)
    transport._conn = conn
    transport._lost.clear()
    transport._ever_connected = True
    return transport, conn


HOSTILE_HEADERS = {
    "x\ndestination": "/queue/elsewhere",
    "y:z": "1",
    "back\\slash": "1",
    "nul\x00": "1",
    "cr\r": "1",
    "AMQ_SCHEDULED_REPEAT": "100000",
    "AMQ_SCHEDULED_PERIOD": "1",
    "AMQ_SCHEDULED_CRON": "* * * * *",
    "JMSXGroupID": "g",
    "transaction": "someone-elses",
    "receipt": "theirs",
    "kept": "value\nwith\x00 a line break",
}


def sent_headers(conn: RecordingConnection) -> list[dict[str, Any]]:
    return [headers for command, headers in conn.frames if command == "SEND"]


def test_copies_of_a_hostile_message_carry_no_frame_breaking_or_broker_headers() -> None:
    transport, conn = offline_transport()
    for settle in ("nack", "dead_letter"):
        transport.receive("work", 0)  # subscribes
        conn.deliver(HOSTILE_HEADERS)
        delivery = transport.receive("work", 1)
        assert delivery is not None
        if settle == "nack":
            transport.nack(delivery, requeue=True)
        else:
            transport.dead_letter(delivery, "why\nnot: one line")
    requeued, dead = sent_headers(conn)[-2:]
    assert requeued["destination"] == "/queue/zocalo.work"
    assert dead["destination"] == "/queue/DLQ.zocalo.work"
    assert dead[REASON_HEADER] == "why not: one line"
    for headers in (requeued, dead):
        names = set(headers) - {"destination", "body"}
        assert not any(set(name) & set(":\n\r\\\x00") for name in names)
        assert not any(name.startswith(("AMQ_SCHEDULED", "JMS")) for name in names)
        assert headers["transaction"] != "someone-elses" and "receipt" not in headers
        assert headers["kept"] == "value\nwith a line break"  # stomp.py escapes values


@given(st.text(max_size=40))
def test_a_name_activemq_reads_specially_is_never_a_destination(name: str) -> None:
    transport, conn = offline_transport()
    why = unroutable(Outgoing(name, b"{}", {}))
    specials = set(",*>/\\") | {c for c in name if c.isspace()}
    if not name or set(name) & specials:
        assert why is not None
        transport.receive("work", 0)
        conn.deliver({})
        delivery = transport.receive("work", 1)
        assert delivery is not None
        settlement = transport.settle(delivery, [Outgoing(name, b"{}", {})])
        assert settlement.undeliverable and not settlement.sent
        (copy,) = sent_headers(conn)
        assert copy["destination"] == "/queue/DLQ.zocalo.work" and copy[ORIGIN_HEADER] == name
    else:
        assert why is None and SAFE_NAME.fullmatch(name)


def test_a_broadcast_and_an_exchange_are_checked_too() -> None:
    assert unroutable(Outgoing("", b"", {}, "status,other", broadcast=True)) is not None
    assert unroutable(Outgoing("", b"", {}, "transient.status", broadcast=True)) is None
    assert "no exchanges" in (unroutable(Outgoing("q", b"", {}, "delayed")) or "")
