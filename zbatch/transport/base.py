"""The transport API: the base class owns routing and JSON; backends own small primitives.

As in python-workflows, JSON conversion happens at one seam (`send_json`/`Delivery.json`),
and a recipe step's destination (queue, topic, exchange, delay) is resolved in one place.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from zbatch.envelope import RECIPE_HEADER, StepMessage

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

    def set_prefetch(self, count: int) -> None:  # noqa: B027 - only brokers bound it
        """Let up to `count` messages wait unacknowledged with this consumer."""

    def send_json(self, queue: str, body: Any, headers: dict[str, Any] | None = None) -> None:
        self.publish(queue, json.dumps(body).encode(), dict(headers or {}))

    def send_step(self, message: StepMessage) -> None:
        """Send a recipe step message to its node, as workflows' RecipeWrapper does."""
        target = message.destination()
        body = json.dumps(message.to_body()).encode()
        headers = {RECIPE_HEADER: True}
        if target.queue:
            self.publish(
                target.queue, body, headers, exchange=target.exchange or "", delay=target.delay
            )
        if target.topic:
            self.broadcast(target.topic, body, headers)

    def send_onward(self, message: StepMessage, channel: str | None, payload: Any) -> list[int]:
        """Send `payload` from `message`'s step on `channel`; returns the destinations."""
        targets = message.destinations(channel)
        for target in targets:
            self.send_step(message.onward(target, payload))
        return targets
