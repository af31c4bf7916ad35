"""The recipe step message: the body python-workflows' RecipeWrapper sends and reads.

Body keys, in workflows' order: environment, payload, recipe, recipe-path, recipe-pointer.
The only AMQP header is `workflows-recipe: true`; all routing state lives in the body.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from zbatch.errors import RecipeError, ZbatchError
from zbatch.model import safejson, safety
from zbatch.model.recipe import Recipe

RECIPE_HEADER = "workflows-recipe"
# Messages larger than this are refused before parsing: no legitimate step needs more.
MAX_MESSAGE_BYTES = safejson.MAX_MESSAGE_BYTES
# RabbitMQ's delayed-message exchange takes at most 2**32 - 1 milliseconds.
MAX_DELAY_S = (2**32 - 1) / 1000
MAX_RECIPE_ID = 256  # zocalo's are UUIDs
# workflows' `set_default_channel`, per sender (StepMessage.destinations): the dispatcher
# sends its submission notice as dlstbx's cluster service does (set_default_channel
# ("job_submitted"), then send()); `zbatch wrap` and what is sent for it later, like
# zocalo.wrap, set none.
DISPATCHER_DEFAULT_CHANNEL = "job_submitted"
WRAPPER_DEFAULT_CHANNEL: str | None = None


def is_recipe_message(headers: dict[str, Any]) -> bool:
    return headers.get(RECIPE_HEADER) in (True, "True", "true", 1)


@dataclass(frozen=True)
class Destination:
    """Where a node's messages go: a queue, a topic, or a queue on a named exchange."""

    node_id: int
    queue: str | None
    topic: str | None
    exchange: str | None
    delay: float | None


@dataclass(frozen=True)
class StepMessage:
    recipe: Recipe
    pointer: int
    path: list[int] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    payload: Any = None

    @property
    def recipe_id(self) -> str:
        return str(self.environment.get("ID", ""))

    @property
    def step(self) -> dict[str, Any]:
        return self.recipe.nodes[self.pointer]

    @classmethod
    def from_body(
        cls,
        body: bytes | str | dict[str, Any],
        source: str = "message",
        *,
        max_bytes: int = safejson.MAX_MESSAGE_BYTES,
        max_depth: int = safejson.MAX_DEPTH,
    ) -> StepMessage:
        """A validated step message from its JSON body (or an already parsed one).

        Text is parsed with `safejson` (size and depth limits); an object given as it is
        is checked for depth too, so nothing downstream recurses over an unbounded value.
        """
        if isinstance(body, bytes | str):
            body = safejson.loads(body, source, max_bytes=max_bytes, max_depth=max_depth)
        else:
            safejson.check_depth(body, source, max_depth)
        if not isinstance(body, dict):
            raise RecipeError(f"{source}: a step message must be a JSON object")
        missing = [k for k in ("recipe", "recipe-pointer") if k not in body]
        if missing:
            raise RecipeError(f"{source}: not a recipe step message: missing {', '.join(missing)}")
        recipe = Recipe.from_json(body["recipe"], source=f"{source} recipe", depth_checked=True)
        pointer = body["recipe-pointer"]
        if not isinstance(pointer, int) or isinstance(pointer, bool) or pointer not in recipe.nodes:
            raise RecipeError(f"{source}: recipe-pointer {pointer!r} names no node of the recipe")
        path = body.get("recipe-path", [])
        if not isinstance(path, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in path
        ):
            raise RecipeError(f"{source}: recipe-path must be a list of node numbers")
        environment = body.get("environment", {})
        if not isinstance(environment, dict):
            raise RecipeError(f"{source}: environment must be an object")
        _check_recipe_id(environment.get("ID", ""), source)
        return cls(recipe, pointer, list(path), dict(environment), body.get("payload"))

    def to_body(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "payload": self.payload,
            "recipe": self.recipe.to_json(),
            "recipe-path": self.path,
            "recipe-pointer": self.pointer,
        }

    def destinations(self, channel: str | None, *, default_channel: str | None) -> list[int]:
        """The nodes workflows' RecipeWrapper sends to from this step, exactly:
        `channel=None` is `send()`, a name is `send_to(name)`, and `default_channel` is what
        `set_default_channel` set (None: never set).

        Named (dict) outputs: `send_to(name)` goes to that name only; `send()` goes to the
        default channel's nodes, and nowhere without one. Unnamed (int/list) outputs:
        `send()` goes to all of them; `send_to(name)` only when name is the default channel.
        The dispatcher sets `job_submitted` as its default channel, as dlstbx's cluster
        service does; `zbatch wrap`, like zocalo.wrap, sets none, so unnamed outputs get
        nothing from `starting`/`success`/`failure`/`completed`.
        """
        outputs = self.recipe.outputs(self.pointer)
        if isinstance(outputs, dict):
            name = default_channel if channel is None else channel
            return list(outputs.get(name, [])) if name else []
        if channel is None or channel == default_channel:
            return list(outputs)
        return []

    def onward(self, target: int, payload: Any) -> StepMessage:
        path = [*self.path, self.pointer] if self.pointer else list(self.path)
        return StepMessage(self.recipe, target, path, self.environment, payload)

    def destination(self) -> Destination:
        node = self.step
        return Destination(
            node_id=self.pointer,
            queue=_str_or_none(node.get("queue")),
            topic=_str_or_none(node.get("topic")),
            exchange=_str_or_none(node.get("exchange")),
            delay=_delay(node.get("transport-delay")),
        )


def job_submitted_payload(job_id: str | None, scheduler: str) -> dict[str, Any]:
    """The `job_submitted` notice: `{"jobid": ..., "scheduler": ...}`, as dlstbx sends it.

    `jobid` is a JSON number when the scheduler's id is one ("461" -> 461, as Slurm's REST
    answer gives dlstbx); any other id stays text (array tasks "123_4", SGE "77.1")."""
    jobid: int | str | None = job_id
    if job_id and job_id.isascii() and job_id.isdigit() and str(int(job_id)) == job_id:
        jobid = int(job_id)
    return {"jobid": jobid, "scheduler": scheduler}


def _delay(value: object) -> float | None:
    """A positive, finite delay in seconds, at most what the broker can hold (else none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        delay = float(value)
    except OverflowError:  # an int too large for a float
        return MAX_DELAY_S
    if math.isnan(delay) or delay <= 0:
        return None
    return min(delay, MAX_DELAY_S)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def start_messages(recipe: Recipe, environment: dict[str, Any] | None = None) -> list[StepMessage]:
    """The messages `RecipeWrapper.start()` sends: one per start entry, path []."""
    env = dict(environment or {})
    env.setdefault("ID", str(uuid.uuid4()))
    return [StepMessage(recipe, node, [], env, payload) for node, payload in recipe.start]


def _check_recipe_id(value: object, source: str) -> None:
    """The recipe ID names files, ledger rows and log lines: one line of valid text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecipeError(f"{source}: environment.ID must be text")
    try:
        safety.check_text(str(value), "environment.ID", limit=MAX_RECIPE_ID)
    except ZbatchError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def internal_reason(exc: BaseException) -> str:
    """The dead-letter reason for a defect: one line, bounded, naming the exception."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"internal error: {type(exc).__name__}: {text}"


def step_key(message: StepMessage) -> str:
    """Same recipe run, same step, same input: the same key, however often it is delivered."""
    ident = json.dumps(
        [message.recipe_id, message.pointer, message.path, message.payload],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:32]
