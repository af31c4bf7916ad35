"""Serve zocalo.go's `processing_recipe` queue: start named recipes as zocalo's Dispatcher does.

A message is `{"recipes": [names], "parameters": {...}, "custom_recipe": {...}?}` (not a
recipe step). The named recipes come from a recipe directory, are merged with the custom
recipe, filled with the parameters (plus a `guid`), and started: each start node's message
goes to its queue with environment `{"ID": guid}`. Anything unusable is dead-lettered.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from zbatch import safety
from zbatch.envelope import start_messages
from zbatch.errors import RecipeError, ZbatchError
from zbatch.recipe import Recipe
from zbatch.transport.base import Delivery, Transport

log = logging.getLogger(__name__)
QUEUE = "processing_recipe"


class RecipeStarter:
    def __init__(self, transport: Transport, recipe_dir: Path) -> None:
        self.transport = transport
        self.recipe_dir = recipe_dir

    def handle(self, delivery: Delivery) -> str:
        try:
            recipe, parameters = self._read(delivery.body)
            started = recipe.apply_parameters(parameters)
            messages = start_messages(started, {"ID": parameters["guid"]})
        except ZbatchError as exc:
            log.warning("processing request dead-lettered: %s", exc)
            self.transport.dead_letter(delivery, str(exc))
            return "dead-lettered"
        for message in messages:
            self.transport.send_step(message)
        self.transport.ack(delivery)
        log.info("recipe %s started: %d start message(s)", parameters["guid"], len(messages))
        return "started"

    def _read(self, body: bytes) -> tuple[Recipe, dict[str, Any]]:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecipeError(f"processing request is not valid JSON: {exc}") from None
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
            recipes.append(Recipe.from_json(custom, source="custom_recipe"))
        merged = recipes[0]
        for other in recipes[1:]:
            merged = merged.merge(other)
        parameters = {**parameters, "guid": str(parameters.get("guid") or uuid.uuid4())}
        return merged, parameters

    def _named(self, name: object) -> Recipe:
        checked = safety.check(safety.NAME, name, "processing request recipe name")
        path = self.recipe_dir / f"{checked}.json"
        if not path.is_file():
            raise RecipeError(f"processing request: no recipe {checked!r} in {self.recipe_dir}")
        return Recipe.load(str(path))
