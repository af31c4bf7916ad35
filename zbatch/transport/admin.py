"""Provision RabbitMQ as zocalo's configure_rabbitmq does, and inspect or replay dead letters.

Clients never declare queues (workflows doesn't either): an administrator runs `setup_broker`
once per site, and a mistyped queue name then fails loudly instead of creating a new queue.

Each work queue is durable (quorum by default), dead-letters to `dlq.<name>` through the default
exchange, and on quorum queues carries `x-delivery-limit` (zocalo sets the same limit, 5, with a
policy). The `dlq.<name>` queues are classic on purpose: peeking at a dead letter (get, then
requeue) must never use up a delivery limit, and classic queues have none.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pika.exceptions as pe

from zbatch.errors import TransportError
from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER, STATUS_EXCHANGE, Delivery
from zbatch.transport.pika import DEAD_LETTERED_AT_HEADER, DELAYED_EXCHANGE, PikaTransport
from zbatch.transport.stomp import BROKER_DLQ_REASON, REQUEUES_HEADER

log = logging.getLogger(__name__)

DELIVERY_LIMIT = 5
REINJECTED_HEADER = "dlq-reinjected"  # zocalo.dlq_reinject's marker
# Bookkeeping that describes a past death; a replayed message starts clean without it.
# (ActiveMQ: `dlqDeliveryFailureCause` on what it dead-lettered itself; zbatch's STOMP
# transport counts its own requeues in `x-zbatch-requeues`.)
DEATH_HEADERS = {
    REASON_HEADER,
    ORIGIN_HEADER,
    DEAD_LETTERED_AT_HEADER,
    "x-delivery-count",
    BROKER_DLQ_REASON,
    REQUEUES_HEADER,
}
DEATH_PREFIXES = ("x-death", "x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class BrokerSetup:
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def queue_arguments(
    name: str, quorum: bool = True, delivery_limit: int | None = DELIVERY_LIMIT
) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"dlq.{name}",
    }
    if quorum:
        arguments["x-queue-type"] = "quorum"
        if delivery_limit:
            arguments["x-delivery-limit"] = delivery_limit
    return arguments


def setup_broker(
    transport: PikaTransport,
    queues: list[str],
    quorum: bool = True,
    delivery_limit: int | None = DELIVERY_LIMIT,
) -> BrokerSetup:
    """Declare each queue, its `dlq.` queue and the exchanges; safe to run again."""
    result = BrokerSetup()
    for name in queues:
        if not name or name.startswith("dlq."):
            raise TransportError(f"{name!r} is not a work queue name", transient=False)
        _declare_queue(transport, name, queue_arguments(name, quorum, delivery_limit))
        _declare_queue(transport, f"dlq.{name}", {})
        result.queues.extend([name, f"dlq.{name}"])
    transport.admin(
        f"declare exchange {STATUS_EXCHANGE!r}",
        lambda ch: ch.exchange_declare(STATUS_EXCHANGE, exchange_type="fanout", durable=True),
    )
    result.exchanges.append(STATUS_EXCHANGE)
    note = _declare_delayed(transport)
    if note:
        log.warning("%s", note)
        result.notes.append(note)
    else:
        result.exchanges.append(DELAYED_EXCHANGE)
    return result


def _declare_queue(transport: PikaTransport, name: str, arguments: dict[str, Any]) -> None:
    def declare(channel: Any) -> str | None:
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            return str(exc.reply_text)
        return None

    mismatch = transport.admin(f"declare queue {name!r}", declare)
    if mismatch:
        wanted = ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "no arguments"
        raise TransportError(
            f"queue {name!r} already exists with other settings: {mismatch}. zbatch needs a "
            f"durable queue with {wanted}; drain and delete it (rabbitmqctl delete_queue "
            f"{name}) or change it to match, then run the setup again",
            transient=False,
        )


def _declare_delayed(transport: PikaTransport) -> str | None:
    """Declare workflows' `delayed` exchange if the x-delayed-message plugin is there.

    Returns a note when it is not. RabbitMQ answers an unknown exchange type by closing the
    whole connection, so the transport reconnects on its next call.
    """

    def exists(channel: Any) -> bool:
        try:
            channel.exchange_declare(DELAYED_EXCHANGE, passive=True)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            return False
        return True

    def declare(channel: Any) -> str | None:
        try:
            channel.exchange_declare(
                DELAYED_EXCHANGE,
                exchange_type="x-delayed-message",
                durable=True,
                arguments={"x-delayed-type": "direct"},
            )
        except pe.ConnectionClosedByBroker as exc:
            if exc.reply_code != 503:
                raise
            return (
                f"skipped exchange {DELAYED_EXCHANGE!r}: the rabbitmq_delayed_message_exchange "
                "plugin is not enabled, so steps with transport-delay cannot be sent"
            )
        return None

    what = f"declare exchange {DELAYED_EXCHANGE!r}"
    if transport.admin(what, exists):
        return None  # provisioned earlier, with the plugin
    return transport.admin(what, declare)


# -- dead letters ------------------------------------------------------------------------------


class DlqTransport(Protocol):
    """What the DLQ tools need: a non-consuming get, a depth, a confirmed publish."""

    def get(self, queue: str) -> Delivery | None: ...

    def queue_depth(self, queue: str) -> int: ...

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        delay: float | None = None,
    ) -> None: ...

    def ack(self, delivery: Delivery) -> None: ...

    def nack(self, delivery: Delivery, requeue: bool = True) -> None: ...


@runtime_checkable
class Browses(Protocol):
    """A broker that can list a queue's messages without taking them (ActiveMQ)."""

    def browse(self, queue: str, limit: int | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class DeadLetter:
    dlq: str
    origin: str  # where a replay sends it
    reason: str | None
    dead_lettered_at: str | None
    headers: dict[str, Any]
    body: bytes


def dlq_name(queue: str) -> str:
    return queue if queue.startswith("dlq.") else f"dlq.{queue}"


def empty_queue(queue: str) -> str:
    """How the DLQ tools say there is nothing to show or replay."""
    return f"queue {dlq_name(queue)} is empty"


def origin_of(dlq: str, headers: dict[str, Any]) -> str:
    """The queue a dead letter came from: our header, the broker's, or the DLQ's name."""
    for key in (ORIGIN_HEADER, "x-first-death-queue"):
        value = headers.get(key)
        if isinstance(value, str) and value:
            return value
    return dlq.removeprefix("dlq.")


def dlq_list(transport: DlqTransport, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue's DLQ (AMQP cannot list queues, so name them)."""
    return {dlq_name(q): transport.queue_depth(dlq_name(q)) for q in queues}


def dlq_show(transport: DlqTransport, queue: str, limit: int = 20) -> list[DeadLetter]:
    """Peek at up to `limit` dead letters: browsed where the broker can, else each is
    fetched, then requeued in place."""
    dlq = dlq_name(queue)
    if isinstance(transport, Browses):
        return [_view(dlq, d) for d in transport.browse(dlq, limit)]
    held: list[Delivery] = []
    try:
        while len(held) < limit and (delivery := transport.get(dlq)) is not None:
            held.append(delivery)
        return [_view(dlq, d) for d in held]
    finally:
        for delivery in held:
            # After a lost connection the broker has requeued them itself.
            with suppress(TransportError):
                transport.nack(delivery, requeue=True)


def dlq_replay(transport: DlqTransport, queue: str, limit: int | None = None) -> int:
    """Send dead letters back to their queues; each leaves the DLQ only once its copy is confirmed.

    At most the messages present at the start are replayed, so one that fails straight back
    into the DLQ is not replayed again in the same run.
    """
    dlq = dlq_name(queue)
    budget = transport.queue_depth(dlq) if limit is None else limit
    replayed = 0
    while replayed < budget and (delivery := transport.get(dlq)) is not None:
        headers = {k: v for k, v in delivery.headers.items() if not _is_death_header(k)}
        headers[REINJECTED_HEADER] = True
        try:
            transport.publish(origin_of(dlq, delivery.headers), delivery.body, headers)
        except TransportError:
            with suppress(TransportError):
                transport.nack(delivery, requeue=True)
            raise
        transport.ack(delivery)
        replayed += 1
    return replayed


def _is_death_header(key: str) -> bool:
    return key in DEATH_HEADERS or key.startswith(DEATH_PREFIXES)


def _view(dlq: str, delivery: Delivery) -> DeadLetter:
    reason = delivery.headers.get(REASON_HEADER)
    if reason is None:
        # Dead-lettered by the broker (delivery limit, rejection): x-death says why on
        # RabbitMQ, dlqDeliveryFailureCause on ActiveMQ.
        reason = delivery.headers.get(
            "x-first-death-reason", delivery.headers.get(BROKER_DLQ_REASON)
        )
    when = delivery.headers.get(DEAD_LETTERED_AT_HEADER)
    return DeadLetter(
        dlq=dlq,
        origin=origin_of(dlq, delivery.headers),
        reason=None if reason is None else str(reason),
        dead_lettered_at=None if when is None else str(when),
        headers=dict(delivery.headers),
        body=delivery.body,
    )
