"""PikaTransport and setup_broker against the real RabbitMQ (scripts/services/up rabbitmq).

Every test uses its own uuid-named queues and deletes them. Two tests restart the broker.
Wire compatibility is checked against the real python-workflows PikaTransport and RecipeWrapper.
"""

from __future__ import annotations

import copy
import queue as queue_mod
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from workflows.recipe import Recipe as WorkflowsRecipe
from workflows.recipe.wrapper import RecipeWrapper
from workflows.transport.pika_transport import PikaTransport as WorkflowsPika

from tests.helpers import restart_service, retry_transient
from zbatch.errors import TransportError
from zbatch.model.message import RECIPE_HEADER, StepMessage
from zbatch.model.recipe import Recipe
from zbatch.transport.admin import dlq_list, dlq_replay, dlq_show, setup_broker
from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER, STATUS_EXCHANGE
from zbatch.transport.pika import DEAD_LETTERED_AT_HEADER, PikaDelivery, PikaTransport
from zbatch.transport.rabbit_settings import RabbitSettings

pytestmark = pytest.mark.rabbitmq

RESTART = Path(__file__).resolve().parents[2] / "scripts" / "services" / "restart"
MakeQueue = Callable[..., str]


def make_transport(**settings: Any) -> PikaTransport:
    transport = PikaTransport(RabbitSettings(**settings))
    transport.connect()
    return transport


@pytest.fixture()
def transport() -> Iterator[PikaTransport]:
    transport = make_transport()
    yield transport
    transport.disconnect()


@pytest.fixture()
def make_queue() -> Iterator[MakeQueue]:
    """Provision uniquely named queues (and their DLQs); delete them all afterwards."""
    names: list[str] = []

    def make(quorum: bool = True, delivery_limit: int | None = 5) -> str:
        name = f"zbatch-test.{uuid.uuid4().hex[:12]}"
        names.append(name)
        with PikaTransport() as admin:
            setup_broker(admin, [name], quorum=quorum, delivery_limit=delivery_limit)
        return name

    yield make
    with PikaTransport() as admin:
        for name in names:
            admin.delete_queue(name)
            admin.delete_queue(f"dlq.{name}")


def receive(transport: PikaTransport, queue: str, timeout: float = 5) -> PikaDelivery:
    delivery = transport.receive(queue, timeout)
    assert delivery is not None, f"nothing arrived on {queue} within {timeout} s"
    return delivery


def restart_broker() -> None:
    restart_service("rabbitmq")


def test_setup_broker_declares_queue_and_dlq_and_is_idempotent(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    again = setup_broker(transport, [name])
    assert again.queues == [name, f"dlq.{name}"] and STATUS_EXCHANGE in again.exchanges
    if "delayed" not in again.exchanges:  # no x-delayed-message plugin on this broker
        assert any("plugin" in note for note in again.notes)
    assert transport.queue_depth(name) == 0 and transport.queue_depth(f"dlq.{name}") == 0
    transport.publish(name, b"still works", {})  # after the delayed probe closed the connection
    assert receive(transport, name).body == b"still works"


def test_setup_broker_refuses_a_queue_with_other_arguments(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue(quorum=True)
    with pytest.raises(TransportError) as err:
        setup_broker(transport, [name], quorum=False)
    message = str(err.value)
    assert not err.value.transient
    assert name in message and "x-queue-type" in message and "delete_queue" in message


def test_round_trip_is_persistent_and_keeps_headers(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b'{"x": 1}', {RECIPE_HEADER: True, "custom": "v"})
    delivery = receive(transport, name)
    assert delivery.body == b'{"x": 1}' and delivery.queue == name
    assert delivery.headers[RECIPE_HEADER] is True and delivery.headers["custom"] == "v"
    assert delivery.delivery_mode == 2  # persistent, as workflows sends
    assert (delivery.redelivered, delivery.delivery_count) == (False, 1)
    transport.ack(delivery)
    transport.disconnect()  # an unacked message would be requeued now
    assert transport.queue_depth(name) == 0
    assert transport.receive(name, 0.3) is None


def test_nack_requeue_redelivers(transport: PikaTransport, make_queue: MakeQueue) -> None:
    name = make_queue()
    transport.publish(name, b"again", {})
    transport.nack(receive(transport, name), requeue=True)
    again = receive(transport, name)
    assert again.body == b"again" and again.redelivered and again.delivery_count == 2
    transport.ack(again)


def test_dead_letter_moves_to_dlq_with_reason(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"poison", {RECIPE_HEADER: True})
    transport.dead_letter(receive(transport, name), "malformed: no recipe")
    transport.disconnect()
    assert transport.queue_depth(name) == 0  # the original is gone, not just unacked
    dead = receive(transport, f"dlq.{name}")
    assert dead.body == b"poison" and dead.headers[RECIPE_HEADER] is True
    assert dead.headers[REASON_HEADER] == "malformed: no recipe"
    assert dead.headers[ORIGIN_HEADER] == name and DEAD_LETTERED_AT_HEADER in dead.headers
    transport.ack(dead)


def test_prefetch_bounds_unacked_deliveries(make_queue: MakeQueue) -> None:
    name = make_queue()
    transport = make_transport(prefetch=3)
    try:
        for n in range(5):
            transport.publish(name, str(n).encode(), {})
        held = [receive(transport, name) for _ in range(3)]
        assert transport.receive(name, 0.5) is None  # the broker sends no 4th while 3 are out
        assert transport.queue_depth(name) == 2
        transport.ack(held[0])
        assert receive(transport, name).body == b"3"
    finally:
        transport.disconnect()


def test_missing_queue_is_a_permanent_error_naming_it(transport: PikaTransport) -> None:
    missing = f"zbatch-test.absent.{uuid.uuid4().hex[:8]}"
    with pytest.raises(TransportError) as err:
        transport.receive(missing, 0.1)
    assert missing in str(err.value) and not err.value.transient
    with pytest.raises(TransportError) as err:
        transport.publish(missing, b"x", {})  # mandatory + confirms: not silently dropped
    assert missing in str(err.value) and not err.value.transient


def test_delay_needs_the_delayed_exchange(transport: PikaTransport, make_queue: MakeQueue) -> None:
    name = make_queue()
    setup = setup_broker(transport, [name])
    if "delayed" in setup.exchanges:
        transport.publish(name, b"later", {}, delay=0.5)
        assert receive(transport, name).headers["x-delay"] == 500
    else:
        with pytest.raises(TransportError, match="'delayed'"):
            transport.publish(name, b"later", {}, delay=0.5)
        transport.publish(name, b"now", {})  # the send channel recovers
        assert receive(transport, name).body == b"now"


def test_broadcast_reaches_a_bound_queue(transport: PikaTransport, make_queue: MakeQueue) -> None:
    name = make_queue(quorum=False)
    transport.admin("bind", lambda ch: ch.queue_bind(name, STATUS_EXCHANGE))
    marker = uuid.uuid4().hex.encode()
    transport.broadcast(STATUS_EXCHANGE, marker, {"k": "v"}, expiration_s=15)
    # Other processes may broadcast status too: look for ours.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        delivery = receive(transport, name)
        transport.ack(delivery)
        if delivery.body == marker:
            assert delivery.headers == {"k": "v"} and delivery.exchange == STATUS_EXCHANGE
            return
    pytest.fail("the broadcast never arrived")


RECIPE: dict[str, Any] = {
    "1": {"queue": "Q1", "parameters": {"wrapper": "generic"}, "output": {"success": [2]}},
    "2": {"queue": "Q2"},
    "start": [[1, {"dcid": 42}]],
}


def recipe_for(first: str, second: str) -> dict[str, Any]:
    recipe = copy.deepcopy(RECIPE)
    recipe["1"]["queue"], recipe["2"]["queue"] = first, second
    return recipe


def test_zbatch_step_is_read_by_workflows(transport: PikaTransport, make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    message = StepMessage(
        Recipe.from_json(recipe_for(first, second)), 1, [], {"ID": "r-1"}, {"dcid": 42}
    )
    transport.send_onward(message, "success", {"result": 7})
    received: queue_mod.Queue[tuple[dict[str, Any], Any]] = queue_mod.Queue()
    wf = WorkflowsPika()
    wf.connect()
    try:
        wf.subscribe(second, lambda h, m: received.put((h, m)), acknowledgement=True)
        header, body = received.get(timeout=10)
        rw = RecipeWrapper(message=body, transport=wf)
        assert header[RECIPE_HEADER] is True and header["delivery_mode"] == 2
        assert (rw.recipe_pointer, rw.recipe_path, rw.payload) == (2, [1], {"result": 7})
        assert rw.environment == {"ID": "r-1"} and rw.recipe_step["queue"] == second
        wf.ack(header)
    finally:
        wf.disconnect()


def test_workflows_start_is_read_by_zbatch(transport: PikaTransport, make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    wf = WorkflowsPika()
    wf.connect()
    try:
        rw = RecipeWrapper(recipe=WorkflowsRecipe(recipe_for(first, second)), transport=wf)
        rw.environment = {"ID": "r-2"}
        rw.start()
    finally:
        wf.disconnect()
    delivery = receive(transport, first)
    step = StepMessage.from_body(delivery.body)
    assert delivery.headers[RECIPE_HEADER] is True and delivery.delivery_mode == 2
    assert (step.pointer, step.path, step.payload) == (1, [], {"dcid": 42})
    assert step.recipe_id == "r-2" and step.step["queue"] == first
    transport.ack(delivery)


def test_publish_after_broker_restart_loses_nothing(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"before", {})
    restart_broker()
    retry_transient(lambda: transport.publish(name, b"after", {}))
    bodies = []
    for _ in range(2):  # prefetch 1: ack each before the next comes
        delivery = receive(transport, name, 10)
        bodies.append(delivery.body)
        transport.ack(delivery)
    assert bodies == [b"before", b"after"]


def test_stale_delivery_is_refused_after_reconnect(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue()
    transport.publish(name, b"in flight", {})
    stale = receive(transport, name)
    restart_broker()
    with pytest.raises(TransportError, match="requeued") as err:
        transport.ack(stale)
    assert not err.value.transient
    again = retry_transient(lambda: receive(transport, name, 10))
    assert again.body == b"in flight" and again.generation != stale.generation
    transport.ack(again)
    assert transport.queue_depth(name) == 0


def test_quorum_delivery_limit_dead_letters(
    transport: PikaTransport, make_queue: MakeQueue
) -> None:
    name = make_queue(delivery_limit=2)
    transport.publish(name, b"fails every time", {RECIPE_HEADER: True})
    counts = []
    while (delivery := transport.receive(name, 2)) is not None:
        counts.append(delivery.delivery_count)
        transport.nack(delivery, requeue=True)
    assert counts == [1, 2, 3]  # the broker gives up after the limit of redeliveries
    (shown,) = dlq_show(transport, name)
    assert shown.body == b"fails every time" and shown.origin == name
    assert shown.reason == "delivery_limit"


def test_dlq_list_show_and_replay(transport: PikaTransport, make_queue: MakeQueue) -> None:
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
    assert back.body == b"retry me" and back.headers["dlq-reinjected"] is True
    assert back.headers[RECIPE_HEADER] is True and REASON_HEADER not in back.headers
    transport.ack(back)
