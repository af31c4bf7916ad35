"""The transport API: the base class owns routing and JSON; backends own small primitives.

As in python-workflows, JSON conversion happens at one seam (`send_json` out; the consumers
parse `Delivery.body` through zbatch/model/safejson.py),
and a recipe step's destination (queue, topic, exchange, delay) is resolved in one place.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zbatch.model.message import RECIPE_HEADER, StepMessage

log = logging.getLogger(__name__)

STATUS_EXCHANGE = "transient.status"
REASON_HEADER = "x-zbatch-dead-letter-reason"
ORIGIN_HEADER = "x-zbatch-original-queue"


@dataclass
class Delivery:
    """One received message, to be acked, nacked or dead-lettered by its consumer."""

    tag: int
    queue: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    delivery_count: int = 1


@dataclass(frozen=True)
class Outgoing:
    """One message as `send_step` publishes it, to be sent as part of a settlement.

    `queue` is the routing key on `exchange` ("" = the default exchange, mandatory: a
    message nobody can route is an error); a `broadcast` goes to the fanout/topic
    `exchange` with no routing key and may be lost when nobody listens. `what` names the
    message in a dead-letter reason ("job_submitted notice for job 12").
    """

    queue: str
    body: bytes
    headers: dict[str, Any]
    exchange: str = ""
    delay: float | None = None
    broadcast: bool = False
    what: str = "message"

    @property
    def destination(self) -> str:
        if self.broadcast:
            return f"exchange {self.exchange!r}"
        on = f" via exchange {self.exchange!r}" if self.exchange else ""
        return f"queue {self.queue!r}{on}"


@dataclass
class Settlement:
    """What `Transport.settle` did: the messages sent, and those it could not deliver.

    An undeliverable message (its queue or exchange does not exist) was put, in the same
    unit as the acknowledgement, into `dlq.<consumed queue>` with `reason` in its
    `REASON_HEADER`; its `ORIGIN_HEADER` names where it was meant to go (a replay sends it
    there once the queue exists).
    """

    sent: list[Outgoing] = field(default_factory=list)
    undeliverable: list[tuple[Outgoing, str]] = field(default_factory=list)


class Transport(ABC):
    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @abstractmethod
    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        delay: float | None = None,
    ) -> None:
        """Persistently publish to `queue` (the routing key) on `exchange`."""

    @abstractmethod
    def broadcast(
        self, exchange: str, body: bytes, headers: dict[str, Any], expiration_s: float | None = None
    ) -> None:
        """Publish to a fanout/topic exchange; losing it when nobody listens is fine."""

    @abstractmethod
    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """The next message on `queue`, or None after `timeout` seconds."""

    @abstractmethod
    def ack(self, delivery: Delivery) -> None: ...

    @abstractmethod
    def nack(self, delivery: Delivery, requeue: bool = True) -> None: ...

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to `dlq.<queue>` with the reason in a header; nothing is lost."""

    def settle(
        self,
        delivery: Delivery,
        sends: list[Outgoing],
        then: Callable[[Settlement], None] | None = None,
    ) -> Settlement:
        """Publish `sends` and acknowledge `delivery` as one unit: all of it happens or none.

        So a message sent on behalf of a delivery is sent once: it is only (re)sent when
        the delivery is (re)delivered, and a delivery comes again only when the unit did
        not happen. A send whose queue does not exist goes to `dlq.<delivery.queue>` in
        the same unit instead (see `Settlement`), so it never blocks the delivery.

        A transport may hold the unit back a little to commit several at once (the pika
        transport does while its consumer still holds other deliveries, until the last
        of them is settled or its next call): `then(settlement)` runs once the unit has
        happened, and never if it did not (the broker then delivers the message again).

        On `TransportError` the delivery is no longer held by this consumer: the
        connection or channel that held it is gone, or it was put back, so the broker will
        deliver it again. The caller must not retry (a commit whose answer was lost may
        have happened). Any other exception leaves nothing done and the delivery held.

        The backends do this atomically; this default (for stand-ins in tests) publishes,
        then acknowledges.
        """
        for outgoing in sends:
            self.send(outgoing)
        self.ack(delivery)
        settlement = Settlement(sent=list(sends))
        after_commit(then, settlement, delivery)
        return settlement

    def keep_alive(self) -> None:  # noqa: B027 - only network brokers need it
        """Service the connection (heartbeats) while the consumer is not receiving."""

    def set_prefetch(self, count: int) -> None:  # noqa: B027 - only brokers bound it
        """Let up to `count` messages wait unacknowledged with this consumer."""

    def send_json(self, queue: str, body: Any, headers: dict[str, Any] | None = None) -> None:
        self.publish(queue, json.dumps(body).encode(), dict(headers or {}))

    def send(self, outgoing: Outgoing) -> None:
        """Publish one `Outgoing` on its own (not part of a settlement)."""
        if outgoing.broadcast:
            self.broadcast(outgoing.exchange, outgoing.body, outgoing.headers)
        else:
            self.publish(
                outgoing.queue,
                outgoing.body,
                outgoing.headers,
                exchange=outgoing.exchange,
                delay=outgoing.delay,
            )

    def send_step(self, message: StepMessage) -> None:
        """Send a recipe step message to its node, as workflows' RecipeWrapper does."""
        for outgoing in step_outgoing(message):
            self.send(outgoing)

    def send_onward(
        self,
        message: StepMessage,
        channel: str | None,
        payload: Any,
        *,
        default_channel: str | None = None,
    ) -> list[int]:
        """Send `payload` from `message`'s step on `channel` (None: workflows' `send()`), with
        `default_channel` as `set_default_channel` set it (`StepMessage.destinations`);
        returns the destinations."""
        targets = message.destinations(channel, default_channel=default_channel)
        for target in targets:
            self.send_step(message.onward(target, payload))
        return targets


def after_commit(
    then: Callable[[Settlement], None] | None, settlement: Settlement, delivery: Delivery
) -> None:
    """Run a settlement's `then`: its failure is logged, since the unit has happened and
    nothing may undo it now."""
    if then is None:
        return
    try:
        then(settlement)
    except Exception:
        log.exception("after settling message %s from %s", delivery.tag, delivery.queue)


def step_outgoing(message: StepMessage, what: str = "message") -> list[Outgoing]:
    """What `send_step(message)` publishes: to the node's queue (on its exchange, with its
    delay) and to its topic, as workflows' RecipeWrapper does."""
    target = message.destination()
    body = json.dumps(message.to_body()).encode()
    out = []
    if target.queue:
        out.append(
            Outgoing(
                target.queue,
                body,
                {RECIPE_HEADER: True},
                exchange=target.exchange or "",
                delay=target.delay,
                what=what,
            )
        )
    if target.topic:
        out.append(Outgoing("", body, {RECIPE_HEADER: True}, target.topic, None, True, what))
    return out


def onward_outgoing(
    message: StepMessage,
    channel: str | None,
    payload: Any,
    what: str = "message",
    *,
    default_channel: str | None = None,
) -> list[Outgoing]:
    """What `send_onward(message, channel, payload, default_channel=...)` publishes, to hand
    to `settle`."""
    return [
        outgoing
        for target in message.destinations(channel, default_channel=default_channel)
        for outgoing in step_outgoing(message.onward(target, payload), what)
    ]
