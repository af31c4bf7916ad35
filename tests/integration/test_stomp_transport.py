"""StompTransport against the real ActiveMQ (scripts/services/up activemq).

Every test uses its own uuid-named queues, emptied afterwards (STOMP cannot delete a queue).
Wire compatibility is checked against the real python-workflows StompTransport and
RecipeWrapper, and the destination names against a plain stomp.py client.
"""

from __future__ import annotations

import copy
import queue as queue_mod
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp
from workflows.recipe import Recipe as WorkflowsRecipe
from workflows.recipe.wrapper import RecipeWrapper
from workflows.transport.stomp_transport import StompTransport as WorkflowsStomp

from tests.helpers import restart_service, retry_transient
from zbatch.errors import TransportError
from zbatch.model.message import RECIPE_HEADER, StepMessage, is_recipe_message
from zbatch.model.recipe import Recipe
from zbatch.transport.admin import dlq_list, dlq_replay, dlq_show
from zbatch.transport.base import (
    ORIGIN_HEADER,
    REASON_HEADER,
    STATUS_EXCHANGE,
    Outgoing,
    Settlement,
)
from zbatch.transport.stomp import DEAD_LETTERED_AT_HEADER, StompDelivery, StompTransport
from zbatch.transport.stomp_settings import StompSettings

pytestmark = pytest.mark.activemq

STOMP_INI = Path("/var/lib/zbatch-services/stomp.ini")
RESTART = Path(__file__).resolve().parents[2] / "scripts" / "services" / "restart"
MakeQueue = Callable[[], str]


def settings(**changes: Any) -> StompSettings:
    base = StompSettings.from_ini(STOMP_INI)
    return StompSettings(**{**base.__dict__, **changes})


def make_transport(**changes: Any) -> StompTransport:
    transport = StompTransport(settings(**changes))
    transport.connect()
    return transport


@pytest.fixture()
def transport() -> Iterator[StompTransport]:
    transport = make_transport()
    yield transport
    transport.disconnect()


@pytest.fixture()
def make_queue() -> Iterator[MakeQueue]:
    """Unique queue names; whatever is left in them (and their DLQs) is consumed afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"zbatch-test.{uuid.uuid4().hex[:12]}"
        names.append(name)
        return name

    yield make
    with StompTransport(settings()) as admin:
        for name in names:
            admin.purge(name)
            admin.purge(f"dlq.{name}")


@pytest.fixture()
def workflows_stomp() -> Iterator[WorkflowsStomp]:
    """The real workflows StompTransport, configured from the zocalo INI (its settings are
    class-level: restored afterwards)."""
    saved = dict(WorkflowsStomp.defaults)
    WorkflowsStomp.load_configuration_file(str(STOMP_INI))
    wf = WorkflowsStomp()
    wf.connect()
    yield wf
    wf.disconnect()
    WorkflowsStomp.defaults.clear()
    WorkflowsStomp.defaults.update(saved)


def receive(transport: StompTransport, queue: str, timeout: float = 5) -> StompDelivery:
    delivery = transport.receive(queue, timeout)
    assert delivery is not None, f"nothing arrived on {queue} within {timeout} s"
    return delivery


def restart_broker() -> None:
    restart_service("activemq")


class RawClient:
    """A plain stomp.py client: sees the destinations exactly as ActiveMQ names them."""

    def __init__(self) -> None:
        s = settings()
        self.frames: queue_mod.Queue[Any] = queue_mod.Queue()
        self.conn = stomp.Connection12([(s.host, s.port)], auto_decode=False)
        listener = stomp.ConnectionListener()
        listener.on_message = self.frames.put
        self.conn.set_listener("raw", listener)
        self.conn.connect(s.username, s.password, wait=True)

    def take(self, destination: str, timeout: float = 5) -> Any:
        self.conn.subscribe(destination, uuid.uuid4().hex, ack="auto")
        return self.frames.get(timeout=timeout)

    def close(self) -> None:
        self.conn.disconnect()


def test_round_trip_is_persistent_and_keeps_headers(
    transport: StompTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b'{"x": 1}', {RECIPE_HEADER: True, "custom": "v"})
    delivery = receive(transport, name)
    assert delivery.body == b'{"x": 1}' and delivery.queue == name
    # STOMP headers are text: True travels as workflows sends it, and reads back as a recipe.
    assert delivery.headers[RECIPE_HEADER] == "True" and is_recipe_message(delivery.headers)
    assert delivery.headers["custom"] == "v" and "message-id" not in delivery.headers
    assert (delivery.redelivered, delivery.delivery_count) == (False, 1)
    transport.ack(delivery)
    transport.disconnect()  # an unacked message would go back to the queue now
    assert transport.queue_depth(name) == 0
    assert transport.receive(name, 0.3) is None


def test_destinations_are_named_as_workflows_names_them(
    transport: StompTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"where", {RECIPE_HEADER: True})
    transport.dead_letter(receive(transport, name), "to see where it goes")
    raw = RawClient()
    try:
        frame = raw.take(f"/queue/DLQ.zocalo.{name}")
        assert frame.body == b"where"
        assert frame.headers["persistent"] == "true"
        assert frame.headers[REASON_HEADER] == "to see where it goes"
    finally:
        raw.close()
    assert transport.queue_destination(name) == f"/queue/zocalo.{name}"
    assert transport.logical_queue(f"/queue/DLQ.zocalo.{name}") == f"dlq.{name}"
    assert transport.topic_destination(STATUS_EXCHANGE) == "/topic/zocalo.transient.status"


def test_unacked_message_comes_back_on_a_new_connection(make_queue: MakeQueue) -> None:
    name = make_queue()
    first = make_transport()
    first.publish(name, b"held", {})
    held = receive(first, name)
    first.disconnect()
    second = make_transport()
    try:
        again = receive(second, name)
        assert again.body == b"held" and again.redelivered and again.delivery_count == 2
        with pytest.raises(TransportError, match="delivers it again"):
            first.ack(held)  # the old connection's delivery refers to nothing now
        second.ack(again)
        assert second.queue_depth(name) == 0
    finally:
        second.disconnect()


def test_nack_requeue_redelivers_once(transport: StompTransport, make_queue: MakeQueue) -> None:
    name = make_queue()
    transport.publish(name, b"again", {"k": "v"})
    transport.nack(receive(transport, name), requeue=True)
    again = receive(transport, name)
    assert again.body == b"again" and again.headers["k"] == "v"
    assert again.redelivered and again.delivery_count == 2
    transport.ack(again)
    assert transport.queue_depth(name) == 0 and transport.queue_depth(f"dlq.{name}") == 0
    with pytest.raises(TransportError):
        transport.ack(again)  # settled already


def test_dead_letter_moves_to_dlq_with_reason(
    transport: StompTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"poison", {RECIPE_HEADER: True})
    transport.dead_letter(receive(transport, name), "bad\nparameters: cpus")
    assert transport.queue_depth(name) == 0
    dead = receive(transport, f"dlq.{name}")
    assert dead.body == b"poison" and dead.headers[RECIPE_HEADER] == "True"
    assert dead.headers[REASON_HEADER] == "bad parameters: cpus"  # one line in a header
    assert dead.headers[ORIGIN_HEADER] == name and dead.headers[DEAD_LETTERED_AT_HEADER]
    transport.ack(dead)


def test_settle_sends_and_acks_together(transport: StompTransport, make_queue: MakeQueue) -> None:
    name, onward = make_queue(), make_queue()
    transport.publish(name, b"step", {})
    delivery = receive(transport, name)
    seen: list[Any] = []
    settlement = transport.settle(
        delivery,
        [Outgoing(onward, b"notice", {RECIPE_HEADER: True}), Outgoing(onward, b"two", {})],
        then=seen.append,
    )
    assert seen == [settlement] and len(settlement.sent) == 2 and not settlement.undeliverable
    assert transport.queue_depth(name) == 0
    bodies = []
    for _ in range(2):
        got = receive(transport, onward)
        bodies.append(got.body)
        transport.ack(got)
    assert bodies == [b"notice", b"two"]


@pytest.mark.parametrize("bad", ["a,b", "a*", "a.>", "a/b", "a b", "a\\b", ""])
def test_a_name_activemq_would_read_as_several_is_dead_lettered_not_sent(
    transport: StompTransport, make_queue: MakeQueue, bad: str
) -> None:
    """',' would send to every queue named (a composite destination), '*' and '>' are
    wildcards: a recipe's queue name never reaches ActiveMQ with one."""
    name = make_queue()
    transport.publish(name, b"step", {})
    settlement = transport.settle(receive(transport, name), [Outgoing(bad, b"notice", {})])
    ((outgoing, reason),) = settlement.undeliverable
    assert outgoing.queue == bad and "undeliverable" in reason
    dead = receive(transport, f"dlq.{name}")
    assert dead.body == b"notice" and dead.headers[ORIGIN_HEADER] == bad
    transport.ack(dead)
    assert transport.queue_depth("a") == 0 and transport.queue_depth("b") == 0
    with pytest.raises(TransportError) as err:
        transport.publish(bad, b"direct", {})
    assert not err.value.transient and "composite" in str(err.value)


def test_a_transaction_cut_off_before_its_commit_leaves_nothing_done(
    transport: StompTransport, make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, onward = make_queue(), make_queue()
    transport.publish(name, b"step", {})
    delivery = receive(transport, name)
    conn = transport._conn

    def cut(*_args: Any, **_kwargs: Any) -> None:
        # The connection dies between the ack and the commit (shutdown, unlike close, ends
        # it at once although stomp.py's receiver thread is reading from it).
        conn.transport.socket.shutdown(socket.SHUT_RDWR)
        raise OSError("cut")

    monkeypatch.setattr(conn, "commit", cut)
    with pytest.raises(TransportError) as err:
        transport.settle(delivery, [Outgoing(onward, b"must not arrive", {})])
    assert err.value.transient
    monkeypatch.undo()
    again = retry_transient(lambda: receive(transport, name, 10))
    assert again.body == b"step" and again.redelivered
    assert transport.queue_depth(onward) == 0  # the send was part of the aborted transaction
    transport.ack(again)


def test_prefetch_bounds_unacked_deliveries(make_queue: MakeQueue) -> None:
    name = make_queue()
    producer = make_transport()
    consumer = make_transport(prefetch=2)
    try:
        for index in range(4):
            producer.publish(name, str(index).encode(), {})
        held = [receive(consumer, name), receive(consumer, name)]
        assert consumer.receive(name, 1.0) is None  # two in hand: the broker holds the rest
        assert producer.queue_depth(name) == 4  # a browse counts those in hand too
        consumer.ack(held[0])
        third = receive(consumer, name)
        assert [d.body for d in [*held, third]] == [b"0", b"1", b"2"]
        for delivery in [held[1], third]:
            consumer.ack(delivery)
    finally:
        producer.disconnect()
        consumer.disconnect()


def test_delay_holds_the_message_back(transport: StompTransport, make_queue: MakeQueue) -> None:
    name = make_queue()
    started = time.monotonic()
    transport.publish(name, b"later", {}, delay=2.0)
    assert transport.receive(name, 1.0) is None
    delivery = receive(transport, name, 10)
    assert delivery.body == b"later" and time.monotonic() - started >= 1.9
    transport.ack(delivery)


def test_broadcast_reaches_a_workflows_status_listener(
    transport: StompTransport, workflows_stomp: WorkflowsStomp
) -> None:
    received: queue_mod.Queue[tuple[dict[str, Any], Any]] = queue_mod.Queue()
    workflows_stomp.subscribe_broadcast(STATUS_EXCHANGE, lambda h, m: received.put((h, m)))
    time.sleep(0.5)  # the topic subscription is in place before anything is sent
    transport.broadcast(STATUS_EXCHANGE, b'{"host": "h", "status": 4}', {}, expiration_s=15)
    header, body = received.get(timeout=10)
    assert body == {"host": "h", "status": 4}
    assert header["destination"] == "/topic/zocalo.transient.status"
    assert int(header["expires"]) > time.time() * 1000


RECIPE: dict[str, Any] = {
    "1": {"service": "a", "queue": "q1", "output": {"success": 2}},
    "2": {"service": "b", "queue": "q2"},
    "start": [[1, {"dcid": 42}]],
}


def recipe_for(first: str, second: str) -> dict[str, Any]:
    recipe = copy.deepcopy(RECIPE)
    recipe["1"]["queue"], recipe["2"]["queue"] = first, second
    return recipe


def test_zbatch_step_is_read_by_workflows(
    transport: StompTransport, make_queue: MakeQueue, workflows_stomp: WorkflowsStomp
) -> None:
    first, second = make_queue(), make_queue()
    message = StepMessage(
        Recipe.from_json(recipe_for(first, second)), 1, [], {"ID": "r-1"}, {"dcid": 42}
    )
    transport.send_onward(message, "success", {"result": 7})
    received: queue_mod.Queue[tuple[dict[str, Any], Any]] = queue_mod.Queue()
    workflows_stomp.subscribe(second, lambda h, m: received.put((h, m)), acknowledgement=True)
    header, body = received.get(timeout=10)
    rw = RecipeWrapper(message=body, transport=workflows_stomp)
    assert header[RECIPE_HEADER] == "True" and header["persistent"] == "true"
    assert (rw.recipe_pointer, rw.recipe_path, rw.payload) == (2, [1], {"result": 7})
    assert rw.environment == {"ID": "r-1"} and rw.recipe_step["queue"] == second
    workflows_stomp.ack(header)


def test_workflows_start_is_read_by_zbatch(
    transport: StompTransport, make_queue: MakeQueue, workflows_stomp: WorkflowsStomp
) -> None:
    first, second = make_queue(), make_queue()
    rw = RecipeWrapper(recipe=WorkflowsRecipe(recipe_for(first, second)), transport=workflows_stomp)
    rw.environment = {"ID": "r-2"}
    rw.start()
    delivery = receive(transport, first)
    step = StepMessage.from_body(delivery.body)
    assert is_recipe_message(delivery.headers)
    assert (step.pointer, step.path, step.payload) == (1, [], {"dcid": 42})
    assert step.recipe_id == "r-2" and step.step["queue"] == first
    transport.ack(delivery)


def test_dlq_list_show_and_replay(transport: StompTransport, make_queue: MakeQueue) -> None:
    name = make_queue()
    transport.publish(name, b"retry me", {RECIPE_HEADER: True})
    transport.dead_letter(receive(transport, name), "scheduler down")
    assert dlq_list(transport, [name]) == {f"dlq.{name}": 1}
    (shown,) = dlq_show(transport, name)
    assert (shown.origin, shown.reason, shown.body) == (name, "scheduler down", b"retry me")
    assert dlq_list(transport, [name]) == {f"dlq.{name}": 1}  # peeking leaves it there
    assert dlq_replay(transport, name) == 1
    assert dlq_list(transport, [name]) == {f"dlq.{name}": 0}
    back = receive(transport, name)
    assert back.body == b"retry me" and back.headers["dlq-reinjected"] == "True"
    assert is_recipe_message(back.headers) and REASON_HEADER not in back.headers
    transport.ack(back)


def test_a_wrong_password_is_a_permanent_error_without_the_password() -> None:
    wrong = "not-the-password-xyz"
    transport = StompTransport(settings(password=wrong, reconnect_s=0))
    with pytest.raises(TransportError) as err:
        transport.connect()
    assert not err.value.transient
    assert wrong not in str(err.value) and "ActiveMQ" in str(err.value)


def test_broker_restart_loses_nothing_and_refuses_stale_deliveries(
    transport: StompTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"before", {})
    stale = receive(transport, name)
    restart_broker()
    with pytest.raises(TransportError, match="delivers it again") as err:
        transport.ack(stale)
    assert not err.value.transient
    retry_transient(lambda: transport.publish(name, b"after", {}))
    bodies = []
    for _ in range(2):
        delivery = retry_transient(lambda: receive(transport, name, 10))
        bodies.append(delivery.body)
        transport.ack(delivery)
    assert bodies == [b"before", b"after"]  # persistent: both survived the restart


def test_settlements_in_flight_share_one_commit(make_queue: MakeQueue) -> None:
    """As the dispatcher settles: while other deliveries are in hand, a settlement waits for
    the commit of the last of them (or the transport's next call), then runs its `then`."""
    name, onward = make_queue(), make_queue()
    transport = make_transport(prefetch=3)
    try:
        for index in range(3):
            transport.publish(name, str(index).encode(), {})
        held = [receive(transport, name) for _ in range(3)]
        done: list[bytes] = []

        def noting(body: bytes) -> Callable[[Settlement], None]:
            return lambda _settlement: done.append(body)

        for delivery in held[:2]:
            transport.settle(
                delivery, [Outgoing(onward, delivery.body, {})], then=noting(delivery.body)
            )
        assert done == [] and transport.queue_depth(onward) == 0  # waiting for the third
        transport.settle(held[2], [Outgoing(onward, b"2", {})], then=noting(b"2"))
        assert done == [b"0", b"1", b"2"] and transport.queue_depth(onward) == 3
        assert transport.queue_depth(name) == 0
        # One in hand, one settled: the next call commits the settled one.
        transport.publish(name, b"3", {})
        transport.publish(name, b"4", {})
        first, second = receive(transport, name), receive(transport, name)
        transport.settle(first, [], then=noting(b"3"))
        assert done[-1] == b"2"
        assert transport.receive(name, 0) is None  # a call: commits the waiting settlement
        assert done[-1] == b"3"
        transport.ack(second)
        assert transport.queue_depth(name) == 0
    finally:
        transport.disconnect()
    with StompTransport(settings()) as reader:
        assert sorted(reader.browse(onward), key=lambda d: d.body)[0].body == b"0"


def test_a_message_that_keeps_losing_its_consumer_is_dead_lettered(
    make_queue: MakeQueue, tmp_path: Path
) -> None:
    """ActiveMQ redelivers a message cut off by a disconnect without end (it counts NACKs
    only): zbatch counts the redeliveries on disk, so a consumer that crashes on a message
    every time stops meeting it after max_deliveries, as with a quorum queue's limit."""
    name = make_queue()
    counts = tmp_path / "state" / "stomp-deliveries.sqlite"
    with StompTransport(settings(), counts) as producer:
        producer.publish(name, b"kills its consumer", {RECIPE_HEADER: True})
    seen = []
    for _ in range(3):  # each consumer "crashes": its connection ends with the message held
        consumer = StompTransport(settings(max_deliveries=3), counts)
        delivery = receive(consumer, name, 10)
        seen.append(delivery.delivery_count)
        consumer._drop()
    assert seen == [1, 2, 3]
    last = StompTransport(settings(max_deliveries=3), counts)
    try:
        assert last.receive(name, 2) is None  # the fourth delivery went to the DLQ instead
        (dead,) = dlq_show(last, name)
        assert dead.body == b"kills its consumer" and dead.origin == name
        assert dead.reason is not None and "delivered 4 times and never settled" in dead.reason
    finally:
        last.disconnect()
    with sqlite3.connect(counts) as db:  # settled (dead-lettered): its count is forgotten
        assert db.execute("SELECT count(*) FROM redeliveries").fetchone() == (0,)


def test_what_activemq_dead_letters_itself_is_shown_with_origin_and_reason(
    transport: StompTransport, make_queue: MakeQueue
) -> None:
    """A raw client NACKs past the broker's redelivery limit: the copy in DLQ.<queue> names
    its origin (`original-destination`) but no reason; zbatch shows where and why."""
    name = make_queue()
    transport.publish(name, b"refused by someone else", {})
    raw = RawClient()
    try:
        raw.conn.subscribe(transport.queue_destination(name), "nacker", ack="client-individual")
        for _ in range(4):  # the first delivery and three redeliveries (activemq.sh)
            frame = raw.frames.get(timeout=10)
            raw.conn.nack(frame.headers["ack"])
    finally:
        raw.close()
    deadline = time.monotonic() + 10
    while not (letters := dlq_show(transport, name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    (letter,) = letters
    assert letter.body == b"refused by someone else" and letter.origin == name
    assert letter.reason is not None and "dead-lettered by ActiveMQ" in letter.reason
