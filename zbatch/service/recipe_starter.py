"""Serve zocalo.go's `processing_recipe` queue: start named recipes as zocalo's Dispatcher does.

A message is `{"recipes": [names], "parameters": {...}, "custom_recipe": {...}?}` (not a
recipe step). The named recipes come from a recipe directory, are merged with the custom
recipe, filled with the parameters (plus a `guid`), and started: each start node's message
goes to its queue with environment `{"ID": guid}`. Anything unusable is dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zbatch.errors import RecipeError, TransportError, ZbatchError
from zbatch.model import safejson, safety
from zbatch.model.message import internal_reason, start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport.base import Delivery, Transport

log = logging.getLogger(__name__)
QUEUE = "processing_recipe"


class RecipeStarter:
    def __init__(self, transport: Transport, recipe_dir: Path) -> None:
        self.transport = transport
        self.recipe_dir = recipe_dir

    def serve(
        self,
        stop: threading.Event,
        queue: str = QUEUE,
        max_messages: int | None = None,
        outcome: Callable[[str], None] | None = None,
    ) -> int:
        """Handle requests from `queue` until `stop` is set or `max_messages` were handled;
        `outcome` hears what became of each ("started", "dead-lettered"). Returns the count.

        The wait for a request is short, so that `stop` is noticed within half a second.
        """
        handled = 0
        while not stop.is_set() and (max_messages is None or handled < max_messages):
            delivery = self.transport.receive(queue, 0.5)
            if delivery is not None:
                result = self.handle(delivery)
                if outcome is not None:
                    outcome(result)
                handled += 1
        return handled

    def handle(self, delivery: Delivery) -> str:
        """Start the requested recipe, or dead-letter the request; never raises for a request.

        Only the broker failing (TransportError) escapes: the request is then redelivered.
        """
        try:
            recipe, parameters = self._read(delivery.body)
            started = recipe.apply_parameters(parameters)
            messages = start_messages(started, {"ID": parameters["guid"]})
        except ZbatchError as exc:
            log.warning("processing request dead-lettered: %s", exc)
            self.transport.dead_letter(delivery, str(exc))
            return "dead-lettered"
        except Exception as exc:  # a defect met by this request: it must not stop the service
            log.exception("processing request %s: internal error", delivery.tag)
            self.transport.dead_letter(delivery, internal_reason(exc))
            return "dead-lettered"
        try:
            return self._start(delivery, messages, parameters)
        except TransportError:
            raise
        except Exception as exc:
            log.exception("processing request %s: internal error while starting", delivery.tag)
            self.transport.dead_letter(delivery, internal_reason(exc))
            return "dead-lettered"

    def _start(self, delivery: Delivery, messages: list[Any], parameters: dict[str, Any]) -> str:
        for message in messages:
            self.transport.send_step(message)
        self.transport.ack(delivery)
        log.info("recipe %s started: %d start message(s)", parameters["guid"], len(messages))
        return "started"

    def _read(self, body: bytes) -> tuple[Recipe, dict[str, Any]]:
        request = safejson.loads(body, "processing request")
        if not isinstance(request, dict):
            raise RecipeError("processing request must be a JSON object")
        names = request.get("recipes", [])
        custom = request.get("custom_recipe")
        parameters = request.get("parameters", {})
        if not isinstance(names, list) or not isinstance(parameters, dict):
            raise RecipeError(
                "processing request: 'recipes' must be a list, 'parameters' an object"
            )
        if not names and custom is None:
            raise RecipeError("processing request names no recipe and has no custom_recipe")
        recipes = [self._named(name) for name in names]
        if custom is not None:
            recipes.append(Recipe.from_json(custom, source="custom_recipe", depth_checked=True))
        merged = recipes[0]
        for other in recipes[1:]:
            merged = merged.merge(other)
        guid = parameters.get("guid") or str(uuid.uuid4())
        if isinstance(guid, int) and not isinstance(guid, bool):
            guid = str(guid)
        safety.check_text(guid, "processing request parameters.guid", limit=256)
        return merged, {**parameters, "guid": guid}

    def _named(self, name: object) -> Recipe:
        checked = safety.check(safety.NAME, name, "processing request recipe name")
        path = self.recipe_dir / f"{checked}.json"
        if not path.is_file():
            raise RecipeError(f"processing request: no recipe {checked!r} in {self.recipe_dir}")
        return Recipe.load(str(path))
