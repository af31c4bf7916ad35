"""Check a whole recipe before anything is submitted: every wrapper step, as it will be sent.

A step that only runs later (after another step's wrapper sends to it) is checked with the
message its predecessor would send (`StepMessage.onward`), so a typo in the last step of a
chain is refused up front instead of dead-lettered after the first steps have run.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from zbatch.errors import ParameterError
from zbatch.model.jobs import PreparedJob
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.profiles import Profile
from zbatch.model.recipe import Recipe, link_targets, parse_links
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.prepare.parameters import is_wrapper_step

# Filled inside the job, from the message payload (the generic wrapper's `{payload[...]}`).
RUNTIME_ROOTS = frozenset({"payload"})
# The parts of a step its job uses; `cluster_project` is left out: dlstbx (and read_step)
# ignore it while it holds an unfilled placeholder.
USED_KEYS = ("parameters", "job_parameters")
IGNORED_PATHS = ("parameters.cluster_project",)
# Shell text: its braces (`${HOME}`, `awk '{print}'`) are the shell's, not placeholders.
SHELL_PATHS = ("parameters.commands", "parameters.cluster_commands", "parameters.cluster.commands")
_REPLACE = "$REPLACE"


@dataclass(frozen=True)
class Placeholder:
    name: str  # the root: `dataset` for `{dataset}` and `{dataset[0]}`
    text: str  # as written, for messages
    runtime: bool  # shell `${NAME}` or `{$REPLACE:NAME}`: not one that must be filled


@dataclass(frozen=True)
class CheckedStep:
    message: StepMessage
    job: PreparedJob


def placeholders(text: str) -> Iterator[Placeholder]:
    """The `{name...}` fields of one string, as python-workflows' substitution reads them."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError:  # stray braces: workflows leaves such text alone
        return
    for literal, field, spec, _ in fields:
        if not field:
            continue
        if field == _REPLACE and spec:
            yield Placeholder(spec, f"{{{field}:{spec}}}", True)
            continue
        try:
            root = _string.formatter_field_name_split(field)[0]
        except ValueError:
            continue
        if isinstance(root, str) and root.isidentifier():  # not awk's `{print $1}`
            yield Placeholder(root, f"{{{field}}}", literal.endswith("$"))


def _walk(value: Any, where: str) -> Iterator[tuple[str, Placeholder]]:
    if isinstance(value, str):
        for found in placeholders(value):
            yield where, found
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(key, where)
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]")


def unused_parameters(recipe: Recipe, parameters: Mapping[str, Any]) -> list[str]:
    """The given parameters that no placeholder of the recipe (any node, any payload) names."""
    named = {p.name for node in recipe.nodes.values() for _, p in _walk(node, "")}
    named |= {p.name for _, payload in recipe.start for _, p in _walk(payload, "")}
    return [key for key in parameters if key not in named]


def check_filled(recipe: Recipe, parameters: Mapping[str, Any]) -> None:
    """Refuse a placeholder left unfilled in what a wrapper step's job uses (`recipe` as
    written, before substitution)."""
    for pointer, node in sorted(recipe.nodes.items()):
        if not is_wrapper_step(node):
            continue
        for key in USED_KEYS:
            for where, found in _walk(node.get(key), key):
                if where.startswith(IGNORED_PATHS + SHELL_PATHS):
                    continue
                if found.runtime or found.name in RUNTIME_ROOTS or found.name in parameters:
                    continue
                raise ParameterError(
                    f"step {pointer}: {where}: placeholder {found.text} is not filled; "
                    f"give --param {found.name}=VALUE"
                )


def step_messages(recipe: Recipe, environment: dict[str, Any]) -> list[StepMessage]:
    """One message per wrapper step: start steps as started, later ones as first reached."""
    todo = start_messages(recipe, environment)
    seen: set[int] = set()
    found: list[StepMessage] = []
    while todo:
        message = todo.pop(0)
        if message.pointer in seen:
            continue
        seen.add(message.pointer)
        if is_wrapper_step(message.step):
            found.append(message)
        todo += [message.onward(target, None) for target in _targets(recipe, message.pointer)]
    return found


def _targets(recipe: Recipe, pointer: int) -> list[int]:
    node = recipe.nodes[pointer]
    where = f"node {pointer}"
    return [
        target
        for key in ("output", "error")
        if key in node
        for target in link_targets(parse_links(node[key], f"{where} field {key!r}"))
    ]


def check_recipe(
    recipe: Recipe,
    parameters: Mapping[str, Any],
    profile: Profile,
    context: JobContext,
    environment: dict[str, Any],
) -> list[CheckedStep]:
    """Every wrapper step of `recipe` (as written) prepared against `profile` after filling
    `parameters`; raises the first step's error. Nothing is written or submitted."""
    check_filled(recipe, parameters)
    filled = recipe.apply_parameters(parameters)
    steps = [
        CheckedStep(message, prepare_job(message, profile, context))
        for message in step_messages(filled, environment)
    ]
    if not steps:
        raise ParameterError("the recipe has no wrapper step: nothing would be submitted")
    return steps
