"""Recipes in the python-workflows JSON format: loading, validation and parameter substitution.

The rules follow python-workflows' `workflows.recipe.Recipe` (tests/unit/model/test_recipe.py
and tests/faults/test_zocalo_end_to_end.py hold zbatch to it), with one difference in spirit:
every error names the node and the field, so a recipe author can fix it.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import copy
import json
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from zbatch.errors import RecipeError
from zbatch.model import safejson

Links = list[int] | dict[str, list[int]]
_NODE_KEY = re.compile(r"[0-9]{1,9}")
# A placeholder's format spec may pad or cut to at most this many characters: `{p:>1500000000}`
# would otherwise allocate 1.5 GB from a few bytes of recipe.
MAX_FORMAT_WIDTH = 1000
_SPEC_NUMBER = re.compile(r"\d+")
# What filling placeholders may add to a recipe, in characters, whatever the recipe repeats.
MAX_SUBSTITUTED_CHARS = safejson.MAX_MESSAGE_BYTES


def _brief(value: object) -> str:
    """A value for an error message: JSON, cut short (a hostile value may be megabytes)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_links(value: object, where: str) -> Links:
    """Normalise an `output`/`error` field: int, list of ints, or dict of those."""
    if _is_int(value):
        return [int(value)]  # type: ignore[call-overload]
    if isinstance(value, list):
        if not all(_is_int(v) for v in value):
            raise RecipeError(f"{where}: invalid link {_brief(value)}: expected node numbers")
        return [int(v) for v in value]
    if isinstance(value, dict):
        named: dict[str, list[int]] = {}
        for name, target in value.items():
            links = parse_links(target, f"{where}[{name!r}]")
            if isinstance(links, dict):
                raise RecipeError(f"{where}[{name!r}]: nested named outputs are not allowed")
            named[str(name)] = links
        return named
    raise RecipeError(
        f"{where}: invalid link {_brief(value)}: "
        "expected a node number, a list of them, or a dict of named outputs"
    )


# Where a node's messages go; a broker takes names of at most 255 bytes.
_ROUTING_FIELDS = ("queue", "topic", "exchange")
_MAX_ROUTING_NAME = 255


def _check_routing(value: object, where: str) -> None:
    """A queue, topic or exchange name, or nothing: a list or a number would send nowhere."""
    if value is None:
        return
    if not isinstance(value, str):
        raise RecipeError(f"{where} must be a name (text), not {type(value).__name__}")
    bad = len(value.encode("utf-8", "surrogatepass")) > _MAX_ROUTING_NAME or any(
        not char.isprintable() for char in value
    )
    if bad:
        raise RecipeError(
            f"{where} {value[:40]!r} is not a usable name: at most {_MAX_ROUTING_NAME} bytes "
            "of printable text"
        )


def link_targets(links: Links) -> Iterator[int]:
    if isinstance(links, dict):
        for targets in links.values():
            yield from targets
    else:
        yield from links


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Node ids are ints, as in workflows after `_sanitize`."""

    nodes: dict[int, dict[str, Any]]
    start: list[tuple[int, Any]]
    error: list[int] = field(default_factory=list)
    # "error" written before "start" in the source: kept so re-serialising matches workflows.
    error_first: bool = False

    @classmethod
    def from_json(
        cls, data: object, source: str = "recipe", *, depth_checked: bool = False
    ) -> Recipe:
        """A validated recipe from JSON text or a parsed object.

        Text is parsed with `safejson`'s size and depth limits; an object is checked for
        depth unless the caller has just done so (`depth_checked`).
        """
        if isinstance(data, str | bytes):
            data = safejson.loads(data, source)
        elif not depth_checked:
            safejson.check_depth(data, source)
        if not isinstance(data, dict) or not data:
            raise RecipeError(f"{source}: a recipe must be a non-empty JSON object")
        nodes = {
            _node_number(key, source): _checked_node(key, node, source)
            for key, node in data.items()
            if key not in ("start", "error")
        }
        keys = list(data)
        error_first = (
            "error" in data and "start" in data and keys.index("error") < keys.index("start")
        )
        recipe = cls(
            nodes,
            _parse_start(data.get("start"), source),
            _parse_error(data, source),
            error_first,
        )
        recipe.validate(source)
        return recipe

    @classmethod
    def load(cls, path: str) -> Recipe:
        data = safejson.load_file(path, max_bytes=safejson.MAX_FILE_BYTES, kind="recipe")
        return cls.from_json(data, source=path, depth_checked=True)

    def validate(self, source: str = "recipe") -> None:
        for node_id, _ in self.start:
            if node_id not in self.nodes:
                raise RecipeError(f"{source}: start refers to node {node_id}, which is missing")
        for node_id in self.error:
            if node_id not in self.nodes:
                raise RecipeError(f"{source}: error refers to node {node_id}, which is missing")
        graph = {node_id: self._targets(node_id, source) for node_id in self.nodes}
        _check_acyclic(graph, source)
        reached = _reachable(graph, [n for n, _ in self.start] + self.error)
        unreached = sorted(set(self.nodes) - reached)
        if unreached:
            raise RecipeError(f"{source}: node {unreached[0]} is not reachable from start or error")

    def _targets(self, node_id: int, source: str) -> list[int]:
        """The nodes `node_id` links to (output and error), each checked to exist."""
        targets: list[int] = []
        node = self.nodes[node_id]
        for fieldname in ("output", "error"):
            if fieldname in node:
                where = f"{source}: node {node_id} field {fieldname!r}"
                for target in link_targets(parse_links(node[fieldname], where)):
                    if target not in self.nodes:
                        raise RecipeError(f"{where} refers to node {target}, which is missing")
                    targets.append(target)
        return targets

    def outputs(self, node_id: int) -> Links:
        node = self.nodes[node_id]
        if "output" not in node:
            return []
        return parse_links(node["output"], f"node {node_id} field 'output'")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form with workflows' key order: start/error first, then nodes as given."""
        head: dict[str, Any] = {"start": [[n, p] for n, p in self.start]}
        if self.error:
            head["error"] = list(self.error)
            if self.error_first:
                head = {"error": head["error"], "start": head["start"]}
        return {**head, **{str(k): v for k, v in self.nodes.items()}}

    def merge(self, other: Recipe) -> Recipe:
        """Both recipes as one, `other`'s nodes renumbered after ours (workflows' merge)."""
        offset = max(self.nodes, default=0)

        def shift(links: object) -> object:
            if _is_int(links):
                return int(links) + offset  # type: ignore[call-overload]
            if isinstance(links, list):
                return [shift(link) for link in links]
            if isinstance(links, dict):
                return {name: shift(link) for name, link in links.items()}
            return links

        nodes = dict(self.nodes)
        for node_id, node in other.nodes.items():
            moved = dict(node)
            for fieldname in ("output", "error"):
                if fieldname in moved:
                    moved[fieldname] = shift(moved[fieldname])
            nodes[node_id + offset] = moved
        start = [*self.start, *((n + offset, p) for n, p in other.start)]
        error = [*self.error, *(n + offset for n in other.error)]
        return Recipe(nodes, start, error, self.error_first)

    def apply_parameters(self, parameters: Mapping[str, Any]) -> Recipe:
        """Fill `{name}` placeholders as workflows does; unknown ones stay as they are.

        Raises RecipeError when a placeholder pads beyond MAX_FORMAT_WIDTH or the filled
        values add more than MAX_SUBSTITUTED_CHARS in all.
        """
        filler = _Filler(parameters)
        nodes = {k: filler.fill(v) for k, v in self.nodes.items()}
        start = [(n, filler.fill(p)) for n, p in self.start]
        return Recipe(nodes, start, list(self.error), self.error_first)


def _parse_start(value: object, source: str) -> list[tuple[int, Any]]:
    if not isinstance(value, list) or not value:
        raise RecipeError(f"{source}: 'start' must be a non-empty list of [node, payload] pairs")
    start: list[tuple[int, Any]] = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2 and _is_int(item[0])):
            raise RecipeError(
                f"{source}: start entry {_brief(item)} must be a [node number, payload] pair"
            )
        start.append((int(item[0]), item[1]))
    return start


def _parse_error(data: dict[str, Any], source: str) -> list[int]:
    if "error" not in data:
        return []
    links = parse_links(data["error"], f"{source}: top-level 'error'")
    if isinstance(links, dict):
        raise RecipeError(f"{source}: top-level 'error' must be a node number or a list of them")
    return links


def _node_number(key: object, source: str) -> int:
    # ASCII digits only: "²".isdigit() is true, but int("²") fails.
    if not (isinstance(key, str) and _NODE_KEY.fullmatch(key) and key == str(int(key))):
        raise RecipeError(f"{source}: node key {str(key)[:40]!r} is not a node number")
    if int(key) == 0:
        raise RecipeError(f"{source}: node 0 is not allowed; number nodes from 1")
    return int(key)


def _checked_node(key: str, node: object, source: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise RecipeError(f"{source}: node {key} must be an object")
    for name in _ROUTING_FIELDS:
        _check_routing(node.get(name), f"{source}: node {key} field {name!r}")
    if _is_int(node.get("output")):  # workflows normalises a bare int to a list
        node = {**node, "output": [node["output"]]}
    return node


def _check_acyclic(graph: dict[int, list[int]], source: str) -> None:
    done: set[int] = set()
    for root in graph:
        if root in done:
            continue
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(graph[root]))]
        on_path = {root}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                raise RecipeError(f"{source}: node {node} links back to node {child}: a cycle")
            elif child not in done:
                on_path.add(child)
                stack.append((child, iter(graph[child])))


def _reachable(graph: dict[int, list[int]], roots: list[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, []))
    return seen


class _Placeholder:
    """Stands in for an unknown name so that `{name[x]}` comes out unchanged."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __getitem__(self, item: object) -> _Placeholder:
        return _Placeholder(f"{self.text}[{item}]")

    def __format__(self, spec: str) -> str:
        return "{" + self.text + (":" + spec if spec else "") + "}"


class _Lenient(dict[str, Any]):
    def __missing__(self, key: str) -> _Placeholder:
        return _Placeholder(key)


class _IndexOnlyFormatter(string.Formatter):
    """`{a[b]}` indexing only: attribute access (`{a.__class__}`) would leak Python internals.

    Format specs are bounded (no width or precision over MAX_FORMAT_WIDTH) and so is the
    text the fields add over the formatter's life (`budget`, in characters).
    """

    def __init__(self, budget: int = MAX_SUBSTITUTED_CHARS) -> None:
        self.budget = budget

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        _, rest = _string.formatter_field_name_split(field_name)
        if any(is_attribute for is_attribute, _ in rest):
            raise KeyError(field_name)
        return super().get_field(field_name, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if isinstance(value, _Placeholder):
            return value.__format__(format_spec)  # stays as text: nothing is padded
        for number in _SPEC_NUMBER.findall(format_spec):
            if len(number) > 4 or int(number) > MAX_FORMAT_WIDTH:
                raise RecipeError(
                    f"placeholder format {format_spec[:40]!r}: a width or precision over "
                    f"{MAX_FORMAT_WIDTH} is not allowed"
                )
        text = super().format_field(value, format_spec)
        self.charge(len(text))
        return text

    def charge(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise RecipeError(
                f"filling the recipe's placeholders adds more than {MAX_SUBSTITUTED_CHARS} "
                "characters: refused"
            )


_REPLACE = "{$REPLACE:"


class _Filler:
    """Fills placeholders across one recipe, within one size budget."""

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self.parameters = parameters
        self.formatter = _IndexOnlyFormatter()
        self._sizes: dict[int, int] = {}

    def _size(self, value: object) -> int:
        # Charged once per object copied: its JSON length (cached, the same object recurs).
        key = id(value)
        if key not in self._sizes:
            self._sizes[key] = len(json.dumps(value, default=str))
        return self._sizes[key]

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._fill_text(value)
        if isinstance(value, dict):
            filled: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = self.fill(key)
                if not isinstance(new_key, str | int | float | bool | None):
                    raise RecipeError(
                        f"placeholder {str(key)[:40]!r} in an object key must fill in text, "
                        f"not {type(new_key).__name__}"
                    )
                filled[new_key] = self.fill(item)
            return filled
        if isinstance(value, list | tuple):
            return [self.fill(v) for v in value]
        return value

    def _fill_text(self, value: str) -> Any:
        if value.startswith(_REPLACE) and value.endswith("}"):
            try:
                found = self.formatter.get_field(value[len(_REPLACE) : -1], (), self.parameters)
            except (KeyError, IndexError, TypeError, ValueError):
                return None
            self.formatter.charge(self._size(found[0]))
            return copy.deepcopy(found[0])
        try:
            return self.formatter.vformat(value, (), _Lenient(self.parameters))
        except (ValueError, IndexError, KeyError, TypeError, AttributeError):
            return value  # stray braces or a bad index: workflows leaves such text alone


def substitute(value: Any, parameters: Mapping[str, Any]) -> Any:
    """`value` with `{name}` placeholders filled from `parameters` (see apply_parameters)."""
    return _Filler(parameters).fill(value)
