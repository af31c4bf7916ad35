"""A step's `job_submitted` notice and its ack are one unit (issue 11, items 3 and 4).

Against the real RabbitMQ: `PikaTransport.settle` publishes and acks in one AMQP transaction;
a transaction that never committed leaves the step to be redelivered and the notice unsent; a
commit whose answer was lost is not retried; a notice nobody can receive is dead-lettered in
the same transaction, and no failure leaves a delivery held on an open channel. And the
embedded SQLite queue: one SQLite transaction, nothing half done.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika.exceptions as pe
import pytest

from tests.helpers import wrapper_step
from zbatch.clusters import cluster_for
from zbatch.errors import TransportError
from zbatch.model.message import RECIPE_HEADER, StepMessage, start_messages, step_key
from zbatch.model.profiles import load_profile_file
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.transport.admin import setup_broker
from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER, Delivery, Outgoing, Settlement
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig
from zbatch.transport.pika import PikaDelivery, PikaTransport

NOTICE = Outgoing("", b'{"jobid": "1"}', {RECIPE_HEADER: True}, what="job_submitted notice")


# -- fixtures -----------------------------------------------------------------------------------


class Names:
    """Uniquely named work and output queues (with their DLQs), deleted afterwards."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def queue(self) -> str:
        name = f"zbatch-test.settle.{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        with PikaTransport() as admin:
            setup_broker(admin, [name])
        return name

    def absent(self) -> str:
        return f"zbatch-test.settle.absent.{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def names() -> Iterator[Names]:
    made = Names()
    yield made
    with PikaTransport() as admin:
        for name in made.made:
            admin.delete_queue(name)
            admin.delete_queue(f"dlq.{name}")


@pytest.fixture()
def rabbit() -> Iterator[PikaTransport]:
    transport = PikaTransport()
    transport.connect()
    yield transport
    transport.disconnect()


def notice_to(queue: str) -> Outgoing:
    return Outgoing(queue, NOTICE.body, NOTICE.headers, what=NOTICE.what)


def take(transport: PikaTransport, queue: str, timeout: float = 5) -> PikaDelivery:
    delivery = transport.receive(queue, timeout)
    assert delivery is not None, f"nothing arrived on {queue} within {timeout} s"
    return delivery


def bodies(queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Everything waiting on `queue`, taken off it (a fresh connection, so nothing is held)."""
    out = []
    with PikaTransport() as reader:
        while (delivery := reader.get(queue)) is not None:
            out.append((delivery.headers, delivery.body))
            reader.ack(delivery)
    return out


def depth_after_release(queue: str) -> int:
    """Ready messages with no consumer holding any (a fresh connection has none)."""
    with PikaTransport() as reader:
        return reader.queue_depth(queue)


class ChannelProxy:
    """The consuming channel with its `tx_commit` replaced (fault injection)."""

    def __init__(self, channel: Any, commit: Any) -> None:
        self._channel = channel
        self._commit = commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def tx_commit(self) -> Any:
        return self._commit(self._channel)


def break_commit(transport: PikaTransport, queue: str, commit: Any) -> None:
    qc = transport._queues[queue]
    qc.channel = ChannelProxy(qc.channel, commit)


def cut_socket(transport: PikaTransport) -> None:
    """Drop the TCP connection under pika, as a network failure or broker crash would."""
    sock = transport._conn._impl._transport._sock
    sock.shutdown(socket.SHUT_RDWR)


# -- RabbitMQ: one transaction ---------------------------------------------------------------


@pytest.mark.rabbitmq
def test_settle_publishes_and_acks_in_one_commit(rabbit: PikaTransport, names: Names) -> None:
    work, out = names.queue(), names.queue()
    rabbit.publish(work, b"step", {RECIPE_HEADER: True})
    delivery = take(rabbit, work)
    settled = rabbit.settle(delivery, [notice_to(out)])
    assert settled.sent == [notice_to(out)] and settled.undeliverable == []
    rabbit.disconnect()  # anything still unacked would be requeued now
    assert depth_after_release(work) == 0
    ((headers, body),) = bodies(out)
    assert body == NOTICE.body and headers[RECIPE_HEADER] is True


@pytest.mark.rabbitmq
def test_connection_dropped_before_commit_sends_nothing_and_redelivers(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out = names.queue(), names.queue()
    rabbit.publish(work, b"step", {RECIPE_HEADER: True})
    delivery = take(rabbit, work)

    def drop_then_commit(channel: Any) -> Any:
        cut_socket(rabbit)  # the publish and the ack were sent; the commit never arrives
        return channel.tx_commit()

    break_commit(rabbit, work, drop_then_commit)
    with pytest.raises(TransportError):
        rabbit.settle(delivery, [notice_to(out)])
    assert not rabbit.connected  # the transport dropped what the failure broke
    assert bodies(out) == []  # the notice was rolled back with the transaction
    again = take(rabbit, work, 10)  # ...and the step comes again (a new connection)
    assert again.body == b"step" and again.redelivered
    rabbit.settle(again, [notice_to(out)])
    assert len(bodies(out)) == 1


@pytest.mark.rabbitmq
def test_group_commit_while_other_deliveries_are_in_hand(
    rabbit: PikaTransport, names: Names
) -> None:
    """Settling while this consumer holds other deliveries waits for one commit of all of
    them: when the last one is settled, or at the next receive."""
    work, out = names.queue(), names.queue()
    for n in range(3):
        rabbit.publish(work, f"step {n}".encode(), {})
    rabbit.set_prefetch(3)
    first, second = take(rabbit, work), take(rabbit, work)
    done: list[bytes] = []
    rabbit.settle(first, [notice_to(out)], lambda _s: done.append(first.body))
    assert done == [] and depth_after_release(out) == 0  # staged, not committed yet
    rabbit.settle(second, [notice_to(out)], lambda _s: done.append(second.body))
    assert done == [b"step 0", b"step 1"]  # the last one in hand: one commit for both
    assert depth_after_release(out) == 2
    third = take(rabbit, work)  # alone in hand: committed at once
    rabbit.settle(third, [notice_to(out)], lambda _s: done.append(third.body))
    assert done[-1] == b"step 2"
    rabbit.disconnect()
    assert depth_after_release(work) == 0 and depth_after_release(out) == 3


@pytest.mark.rabbitmq
def test_staged_settlement_is_committed_by_the_next_receive(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out = names.queue(), names.queue()
    for n in range(2):
        rabbit.publish(work, f"step {n}".encode(), {})
    rabbit.set_prefetch(2)
    first, second = take(rabbit, work), take(rabbit, work)
    rabbit.settle(first, [notice_to(out)])
    assert depth_after_release(out) == 0
    assert rabbit.receive(work, 0.1) is None  # commits what was staged first
    assert depth_after_release(out) == 1
    rabbit.ack(second)
    rabbit.disconnect()
    assert depth_after_release(work) == 0


@pytest.mark.rabbitmq
def test_group_commit_lost_with_the_connection_redelivers_all_and_sends_nothing(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out = names.queue(), names.queue()
    for n in range(3):
        rabbit.publish(work, f"step {n}".encode(), {})
    rabbit.set_prefetch(3)
    held = [take(rabbit, work) for _ in range(3)]
    done: list[Settlement] = []
    for delivery in held[:2]:
        rabbit.settle(delivery, [notice_to(out)], done.append)

    def drop_then_commit(channel: Any) -> Any:
        cut_socket(rabbit)
        return channel.tx_commit()

    break_commit(rabbit, work, drop_then_commit)
    with pytest.raises(TransportError):
        rabbit.settle(held[2], [notice_to(out)])
    assert done == []  # no commit, so nothing after it ran
    assert bodies(out) == []
    again = sorted(take(rabbit, work, 10).body for _ in range(3))
    assert again == [b"step 0", b"step 1", b"step 2"]


@pytest.mark.rabbitmq
def test_rolled_back_dead_letter_leaves_no_copy(rabbit: PikaTransport, names: Names) -> None:
    work = names.queue()
    rabbit.publish(work, b"poison", {RECIPE_HEADER: True})
    delivery = take(rabbit, work)

    def drop_then_commit(channel: Any) -> Any:
        cut_socket(rabbit)
        return channel.tx_commit()

    break_commit(rabbit, work, drop_then_commit)
    with pytest.raises(TransportError):
        rabbit.dead_letter(delivery, "bad")
    assert bodies(f"dlq.{work}") == []
    again = take(rabbit, work, 10)
    rabbit.dead_letter(again, "bad")
    ((headers, body),) = bodies(f"dlq.{work}")  # one copy, never two
    assert body == b"poison" and headers[REASON_HEADER] == "bad"
    assert depth_after_release(work) == 0


@pytest.mark.rabbitmq
def test_defect_inside_the_transaction_rolls_back_and_keeps_the_delivery(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out = names.queue(), names.queue()
    rabbit.publish(work, b"step", {RECIPE_HEADER: True})
    delivery = take(rabbit, work)
    qc = rabbit._queues[work]
    real = qc.channel
    calls = {"n": 0}

    class Frames:  # pika's own channel, where the transaction's frames are queued
        def __getattr__(self, name: str) -> Any:
            return getattr(real._impl, name)

        def basic_publish(self, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("a defect between two publishes")
            return real._impl.basic_publish(*args, **kwargs)

    class SecondPublishFails(ChannelProxy):
        _impl = Frames()

    qc.channel = SecondPublishFails(real, lambda channel: channel.tx_commit())
    with pytest.raises(RuntimeError):
        rabbit.settle(delivery, [notice_to(out), notice_to(out)])
    qc.channel = real
    # Rolled back: the first notice is not there, and the step is still ours to settle.
    assert bodies(out) == []
    rabbit.settle(delivery, [notice_to(out)])
    rabbit.disconnect()
    assert len(bodies(out)) == 1 and depth_after_release(work) == 0


@pytest.mark.rabbitmq
def test_unencodable_send_requeues_the_delivery_and_sends_nothing(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out = names.queue(), names.queue()
    rabbit.publish(work, b"step", {RECIPE_HEADER: True})
    delivery = take(rabbit, work)
    unencodable = Outgoing(out, b"x", {"h": object()})  # AMQP cannot carry this header
    with pytest.raises(TransportError) as err:
        rabbit.settle(delivery, [notice_to(out), unencodable])
    assert not err.value.transient
    assert bodies(out) == []
    again = take(rabbit, work)  # requeued, not held: the same connection gets it again
    assert again.body == b"step" and again.redelivered
    rabbit.ack(again)


# -- RabbitMQ: what cannot be delivered --------------------------------------------------------


@pytest.mark.rabbitmq
def test_notice_to_a_missing_queue_is_dead_lettered_in_the_same_commit(
    rabbit: PikaTransport, names: Names
) -> None:
    work, out, absent = names.queue(), names.queue(), names.absent()
    for n in range(2):
        rabbit.publish(work, f"step {n}".encode(), {RECIPE_HEADER: True})
    rabbit.set_prefetch(2)
    first, second = take(rabbit, work), take(rabbit, work)
    lost = Outgoing(absent, b"notice", {RECIPE_HEADER: True}, what="job_submitted notice for job 7")
    settled = rabbit.settle(first, [lost, notice_to(out)])
    assert settled.sent == [notice_to(out)]
    ((outgoing, reason),) = settled.undeliverable
    assert outgoing == lost
    assert reason == (
        f"job_submitted notice for job 7 undeliverable: queue {absent!r} does not exist"
    )
    # The channel is fine: the other delivery it holds settles as usual.
    rabbit.settle(second, [notice_to(out)])
    rabbit.disconnect()
    assert depth_after_release(work) == 0
    assert len(bodies(out)) == 2
    ((headers, body),) = bodies(f"dlq.{work}")
    assert body == b"notice" and headers[REASON_HEADER] == reason
    assert headers[ORIGIN_HEADER] == absent and headers[RECIPE_HEADER] is True


@pytest.mark.rabbitmq
def test_queue_deleted_after_the_check_is_caught_by_the_broker_return(
    rabbit: PikaTransport, names: Names
) -> None:
    work, gone = names.queue(), names.absent()
    rabbit._known[("queue", gone)] = (True, float("inf"))  # a stale "it exists"
    rabbit.publish(work, b"step", {RECIPE_HEADER: True})
    lost = Outgoing(gone, b"notice", {}, what="job_submitted notice for job 8")
    settled = rabbit.settle(take(rabbit, work), [lost])
    assert settled.sent == []
    ((_, reason),) = settled.undeliverable
    assert reason.startswith("job_submitted notice for job 8 undeliverable: the broker could")
    assert "NO_ROUTE" in reason
    assert ("queue", gone) not in rabbit._known  # checked afresh next time
    rabbit.disconnect()
    assert depth_after_release(work) == 0
    ((headers, body),) = bodies(f"dlq.{work}")
    assert body == b"notice" and headers[ORIGIN_HEADER] == gone


@pytest.mark.rabbitmq
def test_broadcast_to_a_missing_exchange_does_not_close_the_channel(
    rabbit: PikaTransport, names: Names
) -> None:
    """A publish to a missing exchange would close the consuming channel (404), requeueing
    every message it holds, again and again: settle checks exchanges first."""
    work = names.queue()
    for n in range(2):
        rabbit.publish(work, f"step {n}".encode(), {})
    rabbit.set_prefetch(2)
    first, second = take(rabbit, work), take(rabbit, work)
    topic = f"zbatch-test.no-such-exchange.{uuid.uuid4().hex[:8]}"
    shout = Outgoing("", b"to all", {}, exchange=topic, broadcast=True, what="notice")
    settled = rabbit.settle(first, [shout])
    assert settled.undeliverable == [
        (shout, f"notice undeliverable: exchange {topic!r} does not exist")
    ]
    rabbit.ack(second)  # same channel, same generation: still open
    assert second.generation == first.generation
    rabbit.disconnect()
    assert depth_after_release(work) == 0
    ((headers, _),) = bodies(f"dlq.{work}")
    assert headers[ORIGIN_HEADER] == topic


@pytest.mark.rabbitmq
def test_no_dead_letter_queue_means_requeue_not_a_held_slot(
    rabbit: PikaTransport, names: Names
) -> None:
    work = f"zbatch-test.settle.nodlq.{uuid.uuid4().hex[:8]}"
    rabbit.admin("declare", lambda ch: ch.queue_declare(work, durable=True))
    names.made.append(work)
    try:
        rabbit.publish(work, b"step", {})
        delivery = take(rabbit, work)
        with pytest.raises(TransportError, match=r"dlq\..* does not exist") as err:
            rabbit.settle(delivery, [Outgoing(names.absent(), b"n", {})])
        assert not err.value.transient
        again = take(rabbit, work)  # requeued at once, on the same open connection
        assert again.body == b"step" and again.redelivered
        with pytest.raises(TransportError, match="requeued"):
            rabbit.dead_letter(again, "no DLQ to put it in")
        rabbit.ack(take(rabbit, work))
    finally:
        rabbit.delete_queue(work)


# -- the dispatcher: the notice goes with the ack --------------------------------------------


def step_for(work_queue: str, notices: str, workdir: Path) -> StepMessage:
    step = wrapper_step(["true"], queue=work_queue, output={"job_submitted": 2})
    step["parameters"]["workingdir"] = str(workdir)
    recipe = Recipe.from_json({"1": step, "2": {"queue": notices}, "start": [[1, {}]]})
    return start_messages(recipe)[0]


def dispatcher_for(make_profile: Any, transport: Any, queue: str, _tmp_path: Path) -> Dispatcher:
    profile = load_profile_file(make_profile())
    if isinstance(transport, EmbeddedTransport):
        config = TransportConfig("embedded", str(transport.path))
    else:
        config = TransportConfig("pika")
    return Dispatcher(
        profile,
        cluster_for(profile),
        Ledger(),
        transport,
        JobContext(config.job_args()),
        DispatcherConfig(queue=queue, backoff_s=0.01, track=False, workers=2),
    )


@pytest.mark.rabbitmq
def test_lost_commit_answer_is_not_retried(
    names: Names, make_profile: Any, work_root: Path, tmp_path: Path
) -> None:
    """The commit happened but its answer never came (connection forced): the dispatcher
    leaves it to the broker. The broker does not redeliver an acked step, so the notice is
    there once, and nothing is sent again."""
    work, out = names.queue(), names.queue()
    transport = PikaTransport()
    dispatcher = dispatcher_for(make_profile, transport, work, tmp_path)

    def commit_then_lose_answer(channel: Any) -> Any:
        channel.tx_commit()
        raise pe.StreamLostError("connection forced (test)")

    assert transport.receive(work, 0.2) is None  # opens the queue's channel, to break it
    break_commit(transport, work, commit_then_lose_answer)
    transport.send_step(step_for(work, out, work_root / "a"))
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes["redelivery-pending"] == 1
    assert not transport.connected
    assert transport.receive(work, 1.0) is None  # committed: nothing comes back
    transport.disconnect()
    assert depth_after_release(work) == 0
    ((_, body),) = bodies(out)
    assert json.loads(body)["payload"]["scheduler"] == "local"


@pytest.mark.rabbitmq
def test_dispatcher_acks_a_step_whose_notice_queue_is_missing(
    names: Names, make_profile: Any, work_root: Path, tmp_path: Path
) -> None:
    work, absent = names.queue(), names.absent()
    transport = PikaTransport()
    dispatcher = dispatcher_for(make_profile, transport, work, tmp_path)
    message = step_for(work, absent, work_root / "a")
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    transport.disconnect()
    assert depth_after_release(work) == 0
    entry = Ledger().get(step_key(message))
    assert entry is not None and entry.job_id
    ((headers, body),) = bodies(f"dlq.{work}")
    assert headers[REASON_HEADER] == (
        f"job_submitted notice for job {entry.job_id} undeliverable: "
        f"queue {absent!r} does not exist"
    )
    assert str(json.loads(body)["payload"]["jobid"]) == entry.job_id
    sample = dispatcher.metrics.registry.get_sample_value(
        "zbatch_messages_dead_lettered_total", {"reason": "undeliverable-notice"}
    )
    assert sample == 1


# -- the embedded queue: one SQLite transaction ------------------------------------------------


def embedded_delivery(tmp_path: Path, **kwargs: Any) -> tuple[EmbeddedTransport, Delivery]:
    transport = EmbeddedTransport(tmp_path / "queue.sqlite", **kwargs)
    transport.publish("work", b"step", {RECIPE_HEADER: True})
    delivery = transport.receive("work", 0)
    assert delivery is not None
    return transport, delivery


def test_embedded_settle_is_one_transaction(tmp_path: Path) -> None:
    transport, delivery = embedded_delivery(tmp_path)
    shout = Outgoing("", b"all", {}, exchange="transient.x", broadcast=True)
    transport.settle(delivery, [notice_to("out"), shout])
    assert transport.queues() == {"out": 1}
    assert transport.broadcasts("transient.x") == [({}, b"all")]


def test_embedded_settle_failing_midway_leaves_everything_as_it_was(tmp_path: Path) -> None:
    transport, delivery = embedded_delivery(tmp_path)
    unencodable = Outgoing("out", b"x", {"h": object()})  # fails after the first insert
    with pytest.raises(TypeError):
        transport.settle(delivery, [notice_to("out"), unencodable])
    assert transport.queues() == {"work": 1}  # neither the ack nor the first notice
    transport.settle(delivery, [notice_to("out")])  # still ours to settle
    assert transport.queues() == {"out": 1}


def test_embedded_settle_of_a_message_settled_elsewhere_sends_nothing(tmp_path: Path) -> None:
    transport, delivery = embedded_delivery(tmp_path, lease_s=0.0)
    other = EmbeddedTransport(tmp_path / "queue.sqlite")
    taken = other.receive("work", 0)  # the lease ran out: another consumer has it now
    assert taken is not None
    other.settle(taken, [notice_to("out")])
    with pytest.raises(TransportError, match="no longer in the embedded queue"):
        transport.settle(delivery, [notice_to("out")])
    assert transport.queues() == {"out": 1}


def test_embedded_dispatcher_sends_the_notice_once_through_a_failed_commit(
    tmp_path: Path, make_profile: Any, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = EmbeddedTransport(tmp_path / "queue.sqlite", lease_s=0.2)
    dispatcher = dispatcher_for(make_profile, transport, "cluster.submission", tmp_path)
    message = step_for("cluster.submission", "submitted", work_root / "a")
    transport.send_step(message)
    original = EmbeddedTransport._insert

    def disk_full(self: EmbeddedTransport, queue: str, *args: Any) -> None:
        if queue == "submitted":
            raise sqlite3.OperationalError("database or disk is full")
        original(self, queue, *args)

    monkeypatch.setattr(EmbeddedTransport, "_insert", disk_full)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"redelivery-pending": 1}
    assert transport.queues() == {"cluster.submission": 1}  # no notice, step not acked
    monkeypatch.setattr(EmbeddedTransport, "_insert", original)
    dispatcher.serve(threading.Event(), max_messages=1)  # the lease ran out: it comes again
    assert dispatcher.outcomes == {"redelivery-pending": 1, "duplicate": 1}
    assert transport.queues() == {"submitted": 1}


def test_a_message_that_cannot_be_dead_lettered_is_requeued_not_held(
    tmp_path: Path, make_profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = EmbeddedTransport(tmp_path / "queue.sqlite", lease_s=600)
    dispatcher = dispatcher_for(make_profile, transport, "cluster.submission", tmp_path)
    transport.publish("cluster.submission", b"{not json", {RECIPE_HEADER: True})

    def broken(_self: EmbeddedTransport, _delivery: Delivery, _reason: str) -> None:
        raise RuntimeError("a defect in dead-lettering")

    monkeypatch.setattr(EmbeddedTransport, "dead_letter", broken)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"redelivery-pending": 1}
    again = transport.receive("cluster.submission", 0)  # at once, not after the 600 s lease
    assert again is not None and again.delivery_count == 2
