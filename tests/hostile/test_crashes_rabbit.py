"""Issue 10's crashing messages through real RabbitMQ: the `zbatch dispatcher` process lives on.

Before, a message nested 10 000 levels deep raised RecursionError out of the service loop: the
process died and the broker handed the message to the next replica. Now each hostile message
lands in the DLQ with its reason, and the valid step behind them is submitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import Dispatcher, Queues, steps, wait_until
from zbatch.transport.base import REASON_HEADER

pytestmark = [pytest.mark.rabbitmq]
DEEP = 10_000


@pytest.fixture()
def queues() -> Iterator[Queues]:
    q = Queues()
    yield q
    q.close()


def test_hostile_messages_do_not_stop_the_dispatcher(
    queues: Queues, make_profile: Any, work_root: Path, tmp_path: Path
) -> None:
    good = steps(queues, 1, work_root)[0]
    body = good.to_body()
    deep_array = "[" * DEEP + "]" * DEEP
    deep_object = '{"a":' * DEEP + "1" + "}" * DEEP
    with_payload = json.dumps({**body, "payload": "D"}).replace('"D"', deep_array)
    hostile = [
        deep_array.encode(),
        deep_object.encode(),
        with_payload.encode(),
        json.dumps({**body, "environment": "D"}).replace('"D"', deep_object).encode(),
        b'{"recipe": {"\xc2\xb2": {}, "start": [[1, []]]}, "recipe-pointer": 1}',
        b"\xff" * 10,
    ]
    for raw in hostile:
        queues.transport.publish(queues.work, raw, {"workflows-recipe": True})
    queues.transport.send_step(good)
    dispatcher = Dispatcher(str(make_profile()), queues.work, tmp_path / "dispatcher.log")
    dispatcher.start()
    try:
        dlq = f"dlq.{queues.work}"
        wait_until(
            lambda: queues.depth(dlq) == len(hostile) and queues.depth(queues.submitted) == 1,
            120,
            "every hostile message dead-lettered and the good step submitted",
        )
        assert dispatcher.alive(), (tmp_path / "dispatcher.log").read_text()[-3000:]
    finally:
        dispatcher.stop()
    reasons = []
    while (letter := queues.transport.get(dlq)) is not None:
        reasons.append(str(letter.headers.get(REASON_HEADER)))
        queues.transport.ack(letter)
    assert sum("nested more than 64 levels deep" in r for r in reasons) == 4, reasons
    assert any("is not a node number" in r for r in reasons), reasons
    assert any("invalid UTF-8" in r for r in reasons), reasons
    assert "Traceback" not in (tmp_path / "dispatcher.log").read_text()
