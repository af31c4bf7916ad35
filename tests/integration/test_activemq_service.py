"""The real ActiveMQ Classic 5.17 broker (scripts/services/up activemq), over STOMP 1.2.

Each test proves one broker behaviour a STOMP transport relies on, and its docstring states
the fact as verified here. The broker (scripts/services/lib/activemq.sh) listens for STOMP on
127.0.0.1:61613 only, user zbatch/zbatch, with schedulerSupport, the statisticsBrokerPlugin,
per-queue dead-letter queues "DLQ.<queue>" and a redeliveryPlugin (a NACKed message is
redelivered after 1 s, at most MAX_REDELIVERIES times, then dead-lettered).

Every test uses its own uuid-named destinations and leaves them empty (the broker removes
empty, unused queues after 60 s).
"""

from __future__ import annotations

import configparser
import itertools
import json
import queue as queue_mod
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp

pytestmark = pytest.mark.activemq

HOST = "127.0.0.1"
PORT = 61613
USER = "zbatch"
PASSWORD = "zbatch"  # noqa: S105 (the test broker's account)
# Must match ACTIVEMQ_MAX_REDELIVERIES in scripts/services/lib/activemq.sh.
MAX_REDELIVERIES = 3
# Headers that change per delivery or carry no information for the facts below.
VOLATILE = {"ack", "timestamp", "message-id", "content-length", "subscription"}


class Frame:
    def __init__(self, command: str, headers: dict[str, str], body: str) -> None:
        self.command = command
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Frame({self.command}, {self.headers!r}, {self.body!r})"


class Collector(stomp.ConnectionListener):  # type: ignore[misc]
    """Queues every MESSAGE, RECEIPT and ERROR frame in arrival order."""

    def __init__(self) -> None:
        self.frames: queue_mod.Queue[Frame] = queue_mod.Queue()
        # Frames that arrived while wait_receipt waited; next() and drain() return them first.
        self.pending: list[Frame] = []

    def on_message(self, frame: Any) -> None:
        self.frames.put(Frame("MESSAGE", dict(frame.headers), frame.body))

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(Frame("RECEIPT", dict(frame.headers), frame.body))

    def on_error(self, frame: Any) -> None:
        self.frames.put(Frame("ERROR", dict(frame.headers), frame.body))

    def next(self, timeout: float = 5.0) -> Frame:
        if self.pending:
            return self.pending.pop(0)
        try:
            return self.frames.get(timeout=timeout)
        except queue_mod.Empty:
            raise AssertionError(f"no frame within {timeout}s") from None

    def drain(self, quiet: float = 1.0) -> list[Frame]:
        """Every frame until none arrives for `quiet` seconds."""
        out, self.pending = self.pending, []
        while True:
            try:
                out.append(self.frames.get(timeout=quiet))
            except queue_mod.Empty:
                return out

    def wait_receipt(self, receipt: str, timeout: float = 5.0) -> None:
        """Wait for RECEIPT `receipt`; MESSAGE frames arriving meanwhile are kept."""
        end = time.monotonic() + timeout
        skipped: list[Frame] = []
        while True:
            try:
                frame = self.frames.get(timeout=max(0.01, end - time.monotonic()))
            except queue_mod.Empty:
                raise AssertionError(f"no RECEIPT {receipt} within {timeout}s") from None
            if frame.command == "RECEIPT" and frame.headers.get("receipt-id") == receipt:
                self.pending.extend(skipped)
                return
            if frame.command != "MESSAGE":
                raise AssertionError(f"expected RECEIPT {receipt}, got {frame!r}")
            skipped.append(frame)


class Client:
    def __init__(self, conn: Any, frames: Collector) -> None:
        self.conn = conn
        self.frames = frames

    def send(self, destination: str, body: str, receipt: bool = True, **headers: str) -> None:
        headers.setdefault("persistent", "true")
        if receipt:
            rid = uuid.uuid4().hex
            self.conn.send(destination, body, headers={**headers, "receipt": rid})
            self.frames.wait_receipt(rid)
        else:
            self.conn.send(destination, body, headers=headers)

    def subscribe(self, destination: str, sub_id: str = "1", **headers: str) -> None:
        """SUBSCRIBE and wait for its RECEIPT: the subscription is active on return."""
        ack = headers.pop("ack", "client-individual")
        rid = uuid.uuid4().hex
        self.conn.subscribe(destination, id=sub_id, ack=ack, headers={**headers, "receipt": rid})
        self.frames.wait_receipt(rid)

    def ack(self, frame: Frame, **kw: Any) -> None:
        self.conn.ack(frame.headers["ack"], **kw)

    def nack(self, frame: Frame) -> None:
        self.conn.nack(frame.headers["ack"])

    def disconnect(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()


Connect = Callable[..., Client]


def open_client(user: str = USER, password: str = PASSWORD) -> Client:
    conn = stomp.Connection12([(HOST, PORT)], reconnect_attempts_max=1)
    frames = Collector()
    conn.set_listener("collector", frames)
    conn.connect(user, password, wait=True)
    return Client(conn, frames)


@pytest.fixture()
def connect() -> Iterator[Connect]:
    clients: list[Client] = []

    def make(**kw: Any) -> Client:
        client = open_client(**kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()


def qname(tag: str = "q") -> str:
    return f"zbatch-test.{tag}.{uuid.uuid4().hex[:12]}"


def bodies(frames: list[Frame]) -> list[str]:
    return [f.body for f in frames if f.command == "MESSAGE"]


def take_all(client: Client, name: str, quiet: float = 1.0) -> list[str]:
    """Consume (auto ack) everything in queue `name` on a fresh subscription."""
    sub = uuid.uuid4().hex
    client.subscribe(f"/queue/{name}", sub_id=sub, ack="auto")
    got = bodies(client.frames.drain(quiet))
    client.conn.unsubscribe(sub)
    return got


def stable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(headers.items()) if k not in VOLATILE}


# -------------------------------------------------------------------- a. connect


def test_stomp_ini_describes_the_broker(stomp_ini: Path) -> None:
    """scripts/services/up activemq writes /var/lib/zbatch-services/stomp.ini, a zocalo-style
    [stomp] section: host 127.0.0.1, port 61613, username/password zbatch, prefix zocalo."""
    parser = configparser.ConfigParser()
    assert parser.read(stomp_ini) == [str(stomp_ini)]
    assert dict(parser["stomp"]) == {
        "host": HOST,
        "port": str(PORT),
        "username": USER,
        "password": PASSWORD,
        "prefix": "zocalo",
    }


def test_connect_as_zbatch_and_wrong_password_is_refused(connect: Connect) -> None:
    """CONNECT as zbatch/zbatch gets CONNECTED (server "ActiveMQ/5.17.x"). A wrong password
    gets an ERROR frame, header `message: User name [zbatch] or password is invalid.`, then
    the broker closes the socket (stomp.py raises ConnectFailedException). No anonymous
    access (ERROR `User name [null] or password is invalid.`). Nothing listens on
    ActiveMQ's other default ports: 61616 (OpenWire), 1883 (MQTT), 8161 (web console); no
    AMQP connector is configured either (its default port 5672 is RabbitMQ's here)."""
    client = connect()
    assert client.conn.is_connected()

    with socket.create_connection((HOST, PORT), timeout=5) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        reply = sock.recv(4096).decode()
    print("anonymous:", reply.split("\0")[0].splitlines())
    assert reply.startswith("ERROR\n"), reply
    assert "message:User name [null] or password is invalid." in reply

    with socket.create_connection((HOST, PORT), timeout=5) as sock:
        sock.sendall(
            b"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:zbatch\npasscode:zbatch\n\n\0"
        )
        reply = sock.recv(4096).decode()
    lines = reply.split("\0")[0].splitlines()
    print("CONNECTED frame:", lines)
    assert lines[0] == "CONNECTED"
    assert any(line.startswith("server:ActiveMQ/5.17") for line in lines), lines

    with socket.create_connection((HOST, PORT), timeout=5) as sock:
        sock.sendall(
            b"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:zbatch\npasscode:wrong\n\n\0"
        )
        sock.settimeout(5)
        reply = sock.recv(4096).decode()
        rest = sock.recv(4096)
    print("wrong password:", reply.split("\0")[0].splitlines())
    assert reply.startswith("ERROR\n")
    assert "message:User name [zbatch] or password is invalid." in reply
    assert rest == b"", "the broker closes the connection after the ERROR frame"

    with pytest.raises(stomp.exception.ConnectFailedException):
        open_client(password="wrong")  # noqa: S106 (deliberately wrong)

    for port in (61616, 1883, 8161):
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=2).close()


# -------------------------------------------------------------------- b. send / ack


def test_receipt_prefetch_one_and_redelivery_after_disconnect(connect: Connect) -> None:
    """A persistent SEND with a `receipt` header is answered by RECEIPT (receipt-id echoed)
    once stored. With `ack: client-individual` and `activemq.prefetchSize: 1` a subscriber
    gets ONE message and no second one until it acks. Unacked messages are redelivered to
    another connection after the first disconnects: same message-id, header
    `redelivered: true` (no delivery count header is sent)."""
    name = qname("b")
    producer = connect()
    producer.send(f"/queue/{name}", "first")
    producer.send(f"/queue/{name}", "second")

    first = connect()
    first.subscribe(f"/queue/{name}", **{"activemq.prefetchSize": "1"})
    got = first.frames.drain(1.5)
    assert bodies(got) == ["first"], got
    original = got[0]
    assert "redelivered" not in original.headers
    print("first delivery:", stable(original.headers))
    first.disconnect()

    second = connect()
    second.subscribe(f"/queue/{name}", **{"activemq.prefetchSize": "1"})
    again = second.frames.next()
    print("redelivery:", stable(again.headers))
    assert again.body == "first"
    assert again.headers["message-id"] == original.headers["message-id"]
    assert again.headers["redelivered"] == "true"
    assert again.headers["persistent"] == "true"
    second.ack(again)
    nxt = second.frames.next()
    assert nxt.body == "second"
    assert "redelivered" not in nxt.headers
    second.ack(nxt, receipt="acked")
    second.frames.wait_receipt("acked")
    assert take_all(producer, name) == []


# -------------------------------------------------------------------- c. transactions


def test_transaction_commit_sends_and_acks_atomically(connect: Connect) -> None:
    """BEGIN; SEND x2 and ACK of a received message, all with `transaction`; COMMIT with a
    receipt: RECEIPT arrives, both sent messages appear in their queue, the acked message
    is gone. Before the COMMIT the transactional sends are invisible."""
    src, dst = qname("c-src"), qname("c-dst")
    client = connect()
    client.send(f"/queue/{src}", "input")
    client.subscribe(f"/queue/{src}", **{"activemq.prefetchSize": "1"})
    msg = client.frames.next()
    assert msg.body == "input"

    tx = client.conn.begin()
    client.conn.send(f"/queue/{dst}", "out-1", headers={"persistent": "true"}, transaction=tx)
    client.conn.send(f"/queue/{dst}", "out-2", headers={"persistent": "true"}, transaction=tx)
    client.ack(msg, transaction=tx)
    observer = connect()
    assert take_all(observer, dst, quiet=0.5) == [], "uncommitted sends must be invisible"
    client.conn.commit(tx, headers={"receipt": "committed"})
    client.frames.wait_receipt("committed")

    assert sorted(take_all(observer, dst)) == ["out-1", "out-2"]
    client.disconnect()
    assert take_all(observer, src) == [], "the acked input must be gone"


def test_transaction_abort_sends_nothing_and_keeps_the_message(connect: Connect) -> None:
    """ABORT discards the transactional SENDs and the ACK. Surprise: the aborted message is
    NOT redelivered to the same subscription (it stays in-flight there, although its
    prefetch slot is released: the next message is delivered). It comes back
    (`redelivered: true`) to the next consumer once that connection closes; a plain ACK of
    the same ack id after the ABORT consumes it instead."""
    src, dst = qname("c-src"), qname("c-dst")
    client = connect()
    client.send(f"/queue/{src}", "input")
    client.send(f"/queue/{src}", "next")
    client.subscribe(f"/queue/{src}", **{"activemq.prefetchSize": "1"})
    msg = client.frames.next()
    assert msg.body == "input"

    tx = client.conn.begin()
    client.conn.send(f"/queue/{dst}", "never", headers={"persistent": "true"}, transaction=tx)
    client.ack(msg, transaction=tx)
    client.conn.abort(tx, headers={"receipt": "aborted"})
    client.frames.wait_receipt("aborted")
    after = client.frames.drain(2.0)
    assert bodies(after) == ["next"], after
    client.disconnect()

    other = connect()
    assert take_all(other, dst) == [], "aborted sends must never appear"
    other.subscribe(f"/queue/{src}")
    redelivered = other.frames.drain(1.5)
    assert sorted(bodies(redelivered)) == ["input", "next"]
    for frame in redelivered:
        assert frame.headers["redelivered"] == "true"
        other.ack(frame)

    # Re-ACK after ABORT on the same subscription consumes the message.
    again = qname("c-reack")
    client2 = connect()
    client2.send(f"/queue/{again}", "input")
    client2.subscribe(f"/queue/{again}")
    msg = client2.frames.next()
    tx = client2.conn.begin()
    client2.ack(msg, transaction=tx)
    client2.conn.abort(tx)
    client2.ack(msg, receipt="reacked")
    client2.frames.wait_receipt("reacked")
    client2.disconnect()
    assert take_all(other, again) == []


# -------------------------------------------------------------------- d. scheduled delay


def test_scheduled_delay(connect: Connect) -> None:
    """SEND with header `AMQ_SCHEDULED_DELAY: 2000` (schedulerSupport="true"): the RECEIPT
    comes at once, the message is delivered no earlier than 2 s later. The delivered copy
    no longer carries AMQ_SCHEDULED_DELAY but has a `scheduledJobId` header (an
    "ID:..." string, not necessarily equal to its message-id)."""
    name = qname("d")
    client = connect()
    client.subscribe(f"/queue/{name}")
    t0 = time.monotonic()
    client.send(f"/queue/{name}", "later", AMQ_SCHEDULED_DELAY="2000")
    msg = client.frames.next(timeout=15)
    elapsed = time.monotonic() - t0
    print(f"scheduled delivery after {elapsed:.2f}s:", stable(msg.headers))
    assert msg.body == "later"
    assert 1.95 <= elapsed < 10, elapsed
    assert "AMQ_SCHEDULED_DELAY" not in msg.headers
    assert msg.headers["scheduledJobId"].startswith("ID:")
    client.ack(msg, receipt="done")
    client.frames.wait_receipt("done")


# -------------------------------------------------------------------- e. dead letters


def test_nack_is_redelivered_then_dead_lettered(connect: Connect) -> None:
    """STOMP NACK (client-individual) is a poison ack. With the redeliveryPlugin configured
    here it is redelivered after ~1 s (redeliveryDelay), up to maximumRedeliveries=3 times
    (4 deliveries in all, redeliveries carry `redelivered: true`, `redeliveryDelay: 1000`
    and a new `scheduledJobId`); the 4th NACK moves it to queue `DLQ.<queue>`. The
    dead-lettered copy has `destination: /queue/DLQ.<queue>`, `original-destination:
    /queue/<queue>`, `originalExpiration`, the same message-id, and NO
    `dlqDeliveryFailureCause` header. (Without the plugin ActiveMQ would send a NACKed
    message straight to the DLQ.)"""
    name = qname("e-nack")
    client = connect()
    client.send(f"/queue/{name}", "poison", app_header="kept")
    client.subscribe(f"/queue/{name}", **{"activemq.prefetchSize": "1"})
    times: list[float] = []
    deliveries: list[Frame] = []
    for _ in range(MAX_REDELIVERIES + 1):
        msg = client.frames.next(timeout=10)
        times.append(time.monotonic())
        deliveries.append(msg)
        assert msg.body == "poison"
        client.nack(msg)
    for msg in deliveries:
        print("delivery:", stable(msg.headers))
    assert "redelivered" not in deliveries[0].headers
    for msg in deliveries[1:]:
        assert msg.headers["redelivered"] == "true"
        assert msg.headers["redeliveryDelay"] == "1000"
        assert msg.headers["message-id"] == deliveries[0].headers["message-id"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert client.frames.drain(2.5) == [], "no delivery after maximumRedeliveries"

    client.subscribe(f"/queue/DLQ.{name}", sub_id="dlq")
    dead = client.frames.next()
    print("dead letter:", stable(dead.headers))
    assert dead.body == "poison"
    assert dead.headers["destination"] == f"/queue/DLQ.{name}"
    assert dead.headers["original-destination"] == f"/queue/{name}"
    assert dead.headers["message-id"] == deliveries[0].headers["message-id"]
    assert dead.headers["app_header"] == "kept"
    assert "originalExpiration" in dead.headers
    assert "dlqDeliveryFailureCause" not in dead.headers
    client.ack(dead, receipt="dlq-acked")
    client.frames.wait_receipt("dlq-acked")


def test_nack_in_a_dead_letter_queue_goes_to_its_own_dlq(connect: Connect) -> None:
    """A DLQ is an ordinary queue: a message NACKed out of `DLQ.<queue>` is redelivered
    like any other (maximumRedeliveries=3) and then lands in `DLQ.DLQ.<queue>`; it is not
    discarded and does not go to ActiveMQ.DLQ."""
    name = f"DLQ.{qname('e-dlq')}"
    client = connect()
    client.send(f"/queue/{name}", "dead")
    client.subscribe(f"/queue/{name}")
    for _ in range(MAX_REDELIVERIES + 1):
        msg = client.frames.next(timeout=10)
        assert msg.body == "dead"
        client.nack(msg)
    assert client.frames.drain(2.5) == []
    assert take_all(client, f"DLQ.{name}") == ["dead"]


def test_disconnect_without_ack_is_redelivered_forever(connect: Connect) -> None:
    """A consumer that disconnects without ACK never dead-letters the message: after
    2 * maximumRedeliveries + 1 such disconnects it is still redelivered
    (`redelivered: true`, same message-id) and `DLQ.<queue>` stays empty. The broker's
    redelivery limit applies to NACK (poison ack) only; a transport must count
    deliveries itself (ActiveMQ sends no delivery count over STOMP) and NACK a message
    it keeps seeing."""
    name = qname("e-drop")
    producer = connect()
    producer.send(f"/queue/{name}", "crashy")
    first_id = None
    for attempt in range(2 * MAX_REDELIVERIES + 2):
        consumer = open_client()
        try:
            consumer.subscribe(f"/queue/{name}", **{"activemq.prefetchSize": "1"})
            msg = consumer.frames.next(timeout=10)
            assert msg.body == "crashy"
            if attempt == 0:
                first_id = msg.headers["message-id"]
                assert "redelivered" not in msg.headers
            else:
                assert msg.headers["message-id"] == first_id
                assert msg.headers["redelivered"] == "true"
        finally:
            consumer.disconnect()
    assert take_all(producer, f"DLQ.{name}", quiet=0.5) == []
    assert take_all(producer, name) == ["crashy"]


# -------------------------------------------------------------------- f. browsing


def test_browse_returns_messages_without_consuming(connect: Connect) -> None:
    """SUBSCRIBE with header `browser: true` to a queue of N messages returns the N
    messages (in order) and then one MESSAGE frame with headers `browser: end`,
    `message-id: 0`, and an empty body; the messages stay in the queue. On an empty queue
    the browser gets only that end frame."""
    name = qname("f")
    client = connect()
    client.subscribe(f"/queue/{name}", sub_id="b0", ack="auto", browser="true")
    empty = client.frames.drain(1.0)
    print("browse empty queue:", empty)
    assert len(empty) == 1
    assert empty[0].headers["browser"] == "end"
    assert empty[0].headers["message-id"] == "0"
    assert empty[0].body == ""

    for i in range(3):
        client.send(f"/queue/{name}", f"m{i}")
    client.subscribe(f"/queue/{name}", sub_id="b1", ack="auto", browser="true")
    frames = client.frames.drain(1.0)
    print("browse 3:", [stable(f.headers) for f in frames])
    assert [f.body for f in frames] == ["m0", "m1", "m2", ""]
    assert all("browser" not in f.headers for f in frames[:3])
    assert frames[3].headers["browser"] == "end"
    assert take_all(client, name) == ["m0", "m1", "m2"]


# -------------------------------------------------------------------- g. topic


def test_transient_status_topic_with_expires(connect: Connect) -> None:
    """SEND to /topic/zocalo.transient.status with an `expires` header (epoch ms) in the
    future reaches a topic subscriber, header `expires` intact; one whose `expires` is
    already in the past is dropped by the broker."""
    topic = "/topic/zocalo.transient.status"
    tag = uuid.uuid4().hex
    client = connect()
    client.subscribe(topic, sub_id="t", ack="auto")
    sender = connect()
    now = int(time.time() * 1000)
    sender.send(topic, f"past {tag}", expires=str(now - 1000), persistent="false")
    sender.send(topic, f"future {tag}", expires=str(now + 30_000), persistent="false")
    mine = [f for f in client.frames.drain(1.5) if tag in f.body]
    print("topic:", [(f.body, stable(f.headers)) for f in mine])
    assert [f.body for f in mine] == [f"future {tag}"]
    assert mine[0].headers["expires"] == str(now + 30_000)
    assert mine[0].headers["destination"] == topic


# -------------------------------------------------------------------- h. queue depth


def stats_map(body: str) -> dict[str, Any]:
    """XStream's JSON for a MapMessage: {"map": {"entry": [{"string": key, "long": 3},
    {"string": [key, "string value"]}, ...]}} -> {key: value}."""
    out: dict[str, Any] = {}
    for entry in json.loads(body)["map"]["entry"]:
        key = entry.pop("string")
        if isinstance(key, list):
            out[key[0]] = key[1]
        else:
            ((_, value),) = entry.items()
            out[key] = value
    return out


def test_queue_depth_via_statistics_plugin(connect: Connect) -> None:
    """Queue depth over STOMP: SEND (any body) to `/queue/ActiveMQ.Statistics.Destination.
    <queue>` with `reply-to: /temp-queue/x`; the reply (header `type: Advisory`) is a
    MapMessage. Subscribed with `transformation: jms-map-json` its body is XStream JSON
    {"map":{"entry":[{"string":"size","long":2},...]}} with size, enqueueCount,
    dequeueCount, consumerCount, inflightCount, dispatchCount, expiredCount, producerCount,
    memoryUsage, averageEnqueueTime, destinationName "queue://<queue>", brokerName ...
    Without the transformation header the body is the same map as XML (header
    `transformation: jms-map-xml`). A queue that does not exist gets no reply at all."""
    name = qname("h")
    client = connect()
    for i in range(3):
        client.send(f"/queue/{name}", f"m{i}")
    client.subscribe(f"/queue/{name}", sub_id="c", **{"activemq.prefetchSize": "1"})
    msg = client.frames.next()
    client.ack(msg, receipt="one")
    client.frames.wait_receipt("one")
    client.conn.unsubscribe("c")
    client.frames.drain(0.5)  # the prefetched second message, returned on unsubscribe

    client.subscribe("/temp-queue/stats", sub_id="s", ack="auto", transformation="jms-map-json")
    client.send(
        f"/queue/ActiveMQ.Statistics.Destination.{name}",
        "",
        receipt=False,
        **{"reply-to": "/temp-queue/stats"},
    )
    reply = client.frames.next()
    print("stats reply headers:", stable(reply.headers))
    print("stats reply body:", reply.body)
    assert reply.headers["transformation"] == "jms-map-json"
    stats = stats_map(reply.body)
    assert stats["destinationName"] == f"queue://{name}"
    assert (stats["size"], stats["enqueueCount"], stats["dequeueCount"]) == (2, 3, 1)
    assert stats["brokerName"] == "zbatch"

    client.subscribe("/temp-queue/stats-xml", sub_id="x", ack="auto")
    client.send(
        f"/queue/ActiveMQ.Statistics.Destination.{name}",
        "",
        receipt=False,
        **{"reply-to": "/temp-queue/stats-xml"},
    )
    xml = client.frames.next()
    assert xml.headers["transformation"] == "jms-map-xml"
    assert xml.body.startswith("<map>")
    assert "<string>size</string>\n    <long>2</long>" in xml.body

    client.send(
        f"/queue/ActiveMQ.Statistics.Destination.{qname('nosuch')}",
        "",
        receipt=False,
        **{"reply-to": "/temp-queue/stats"},
    )
    assert client.frames.drain(1.5) == [], "no reply for a queue that does not exist"
    assert take_all(client, name) == ["m1", "m2"]


# -------------------------------------------------------------------- i. names


def test_destination_names(connect: Connect) -> None:
    """Queue names with spaces, "/", non-ASCII or 3000 characters work unchanged (SEND with
    receipt, SUBSCRIBE, `destination` header echoed verbatim). A "," is NOT a character
    of a name: `/queue/a,b` is a composite destination (SEND puts a copy in queue a and
    in queue b; SUBSCRIBE consumes from both), and ">" / "*" are wildcards for
    subscribers (`/queue/x.*` receives what is then sent to x.a and x.b): a transport must
    reject or escape "," "*" ">" in queue names."""
    tag = uuid.uuid4().hex[:8]
    client = connect()
    for name in (
        f"zbatch-test.i.{tag} with space",
        f"zbatch-test.i.{tag}/with/slash",
        f"zbatch-test.i.{tag}.ünï",
        f"zbatch-test.i.{tag}." + "L" * 3000,
    ):
        client.send(f"/queue/{name}", "hello")
        sub = uuid.uuid4().hex
        client.subscribe(f"/queue/{name}", sub_id=sub, ack="auto")
        got = client.frames.next()
        assert (got.body, got.headers["destination"]) == ("hello", f"/queue/{name}")
        client.conn.unsubscribe(sub)

    a, b = f"zbatch-test.i.{tag}.a", f"zbatch-test.i.{tag}.b"
    client.send(f"/queue/{a},{b}", "both")
    assert take_all(client, a) == ["both"]
    assert take_all(client, b) == ["both"]

    # A wildcard subscriber gets what is sent to matching queues after it subscribed.
    # (Messages already queued before a wildcard SUBSCRIBE were NOT delivered to it in 5 of
    # 12 trials here: wildcard queue consumers are unreliable, do not use them.)
    client.subscribe(f"/queue/zbatch-test.i.{tag}.*", sub_id="wild", ack="auto")
    sender = connect()
    sender.send(f"/queue/{a}", "one")
    sender.send(f"/queue/{b}", "two")
    assert sorted(bodies(client.frames.drain(1.5))) == ["one", "two"]
