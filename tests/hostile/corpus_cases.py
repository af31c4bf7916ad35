"""The hostile corpus: cases read from tests/hostile/corpus/*.json and turned into inputs.

`fields.json` crosses every field of a wrapper step with the value families of
`values.json`; `cases.json` adds hand-written cases (issue examples, recipe structure,
envelopes, raw broker bodies, profile YAML, broker settings). To grow the corpus, add a
family to a field's list, a literal, or a case: nothing here needs to change.

Values are JSON with a few generators (see values.json `_doc`): deep nesting and huge numbers
are written as JSON text directly, because Python's own `json` cannot produce them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
KINDS = ("step", "job", "recipe", "param", "envelope", "broker", "profile", "admin", "jobenv")
GENERATORS = frozenset(
    {
        "$digits", "$as", "$deep", "$deep_object", "$repeat", "$times", "$prefix", "$raw",
        "$delete", "$many_keys", "$value_len", "$chain", "$start_many", "$int_list",
    }
)  # fmt: skip
_MISSING = object()


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS_DIR / name).read_text(encoding="utf-8"))
    return data


@cache
def values() -> dict[str, Any]:
    found: dict[str, Any] = _load("values.json")["values"]
    return found


@cache
def bases() -> dict[str, Any]:
    return _load("bases.json")


@dataclass
class Case:
    """One hostile input and where it goes."""

    id: str
    kind: str
    base: str = "wrapper"
    sets: list[tuple[list[Any], Any]] = field(default_factory=list)
    whole: Any = _MISSING
    params: list[str] = field(default_factory=list)
    expect: Any = None
    run: bool = False
    dispatch: bool = False
    isolate: bool = False
    no_subprocess: bool = False
    run_profile: str = "plain"
    spec: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def slug(self) -> str:
        """A file-name-safe, unique form of the id."""
        digest = hashlib.sha1(self.id.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.id)[:60] + "-" + digest

    @property
    def mode(self) -> str:
        """What the job script's command block holds: a wrapper call or the recipe's commands."""
        return str(bases()["bases"][self.base]["mode"])

    def fingerprint(self) -> str:
        """What makes this input distinct from every other (its id aside)."""
        data = {
            "kind": self.kind,
            "base": self.base,
            "sets": self.sets,
            "whole": None if self.whole is _MISSING else self.whole,
            "params": self.params,
            "spec": {k: v for k, v in self.spec.items() if k not in ("id", "why", "expect")},
        }
        text = json.dumps(data, sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def modes(self) -> list[str]:
        found = {
            "step": ["render"],
            "job": ["render", "wrap"],
            "recipe": ["render"],
            "param": ["render"],
            "envelope": ["wrap", "dispatch"],
            "broker": ["wrap", "dispatch"],
            "profile": ["profiles"],
            "admin": ["admin"],
            "jobenv": ["wrap"],
        }[self.kind]
        if self.run:
            found.append("run")
        if self.dispatch and "dispatch" not in found:
            found.append("dispatch")
        return found

    def expected(self, mode: str, profile: ProfileFacts | None = None) -> str:
        """error, accept, warn or either: what this case must produce in `mode`."""
        expect = self.expect
        if expect is None:
            return "either"
        if isinstance(expect, str):
            return expect
        keys = [mode]
        if profile is not None:
            keys += [profile.name]
            if profile.planted:
                keys.append("planted")
            keys += [
                "rooted" if profile.rooted else "unrooted",
                "commands" if profile.allow_commands else "no_commands",
                profile.scheduler,
            ]
        keys.append("default")
        for key in keys:
            if key in expect:
                return str(expect[key])
        return "either"


@dataclass(frozen=True)
class ProfileFacts:
    """What an expectation may depend on."""

    name: str
    scheduler: str
    rooted: bool
    allow_commands: bool
    planted: bool = False  # @@root@@ holds symlinks that lead out of the workdir_root


# ---------------------------------------------------------------------------------------------
# Building the case list


def _families(spec: list[str], groups: Mapping[str, list[str]]) -> list[str]:
    out: list[str] = []
    for item in spec:
        out += _families(groups[item[1:]], groups) if item.startswith("@") else [item]
    return out


def _family_expect(entry: Mapping[str, Any], family: str, path_expect: Mapping[str, Any]) -> Any:
    expect = entry.get("expect")
    names = set(values()) | set(entry.get("literals", {})) | {"*"}
    if isinstance(expect, dict) and any(k in names for k in expect):
        expect = expect.get(family, expect.get("*"))  # a table by family
    if entry.get("path_field") and family in path_expect:
        found = path_expect[family]
        if entry.get("kind") == "job":
            # A wrapper's own folders: confined where the profile has a root; `zbatch wrap`
            # knows no profile, and a relative folder lies inside the job's workdir.
            if family in ("path_relative", "path_tilde"):
                return expect
            if found == "error":
                found = {"rooted": "error", "wrap": "error"}
        return found
    return expect


def field_cases() -> list[Case]:
    data = _load("fields.json")
    groups: dict[str, list[str]] = data["groups"]
    path_expect: dict[str, Any] = data["path_expect"]
    cases: list[Case] = []
    for entry in data["fields"]:
        literals: dict[str, Any] = entry.get("literals", {})
        names = _families(entry.get("families", []), groups) + list(literals)
        run = set(_families(entry.get("run", []), groups))
        dispatch = set(entry.get("dispatch", []))
        for name in names:
            value = literals[name] if name in literals else values()[name]
            path = list(entry["path"])
            if entry.get("as_key"):
                sets = [(path, {"$key": value, "$value": entry.get("key_value", "1")})]
            else:
                sets = [(path, value)]
            cases.append(
                Case(
                    id=f"{entry['field']}:{name}",
                    kind=entry.get("kind", "step"),
                    base=entry.get("base", "wrapper"),
                    sets=sets,
                    expect=_family_expect(entry, name, path_expect),
                    run=name in run,
                    dispatch=name in dispatch,
                    run_profile=entry.get("run_profile", "plain"),
                    spec={
                        "field": entry["field"],
                        "family": name,
                        "path_field": bool(entry.get("path_field")),
                    },
                )
            )
    return cases


def explicit_cases() -> list[Case]:
    cases = []
    for entry in _load("cases.json")["cases"]:
        cases.append(
            Case(
                id=entry["id"],
                kind=entry.get("kind", "step"),
                base=entry.get("base", "wrapper"),
                sets=[(list(p), v) for p, v in entry.get("set", [])],
                whole=entry.get("whole", _MISSING),
                params=list(entry.get("params", [])),
                expect=entry.get("expect"),
                run=bool(entry.get("run")),
                dispatch=bool(entry.get("dispatch")),
                isolate=bool(entry.get("isolate")),
                no_subprocess=bool(entry.get("no_subprocess")),
                run_profile=entry.get("run_profile", "plain"),
                spec=entry,
                why=entry.get("why", ""),
            )
        )
    return cases


@cache
def all_cases() -> tuple[Case, ...]:
    return tuple(field_cases() + explicit_cases())


def cases_for(mode: str) -> list[Case]:
    return [c for c in all_cases() if mode in c.modes()]


# ---------------------------------------------------------------------------------------------
# Materialising: markers, generators and JSON text


@dataclass(frozen=True)
class Markers:
    """What the @@markers@@ of a case stand for in one place where it runs."""

    root: str
    outside: str
    canary: str
    submitted: str = "hostile.submitted"
    world_writable: str = "/nonexistent-world-writable"


_MACRO = re.compile(r"@@([A-Za-z0-9_]+)@@")


def _alias_bomb() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append("name: bomb\nscheduler: local\nsetup: *i")
    return "\n".join(lines) + "\n"


def expand_text(text: str, markers: Markers) -> str:
    if "@@" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        word = match.group(1)
        fixed = {
            "root": markers.root,
            "outside": markers.outside,
            "canary": markers.canary,
            "submitted": markers.submitted,
            "world_writable": markers.world_writable,
        }
        if word in fixed:
            return fixed[word]
        if word == "alias_bomb":
            return _alias_bomb()
        if m := re.fullmatch(r"x(\d+)", word):
            return "x" * int(m.group(1))
        if m := re.fullmatch(r"(\d+)digits", word):
            return "9" * int(m.group(1))
        if m := re.fullmatch(r"9x(\d+)", word):
            return "9" * int(m.group(1))
        if m := re.fullmatch(r"open(\d+)", word):
            return "[" * int(m.group(1)) + "]" * int(m.group(1))
        if m := re.fullmatch(r"map(\d+)", word):
            return "{a: " * int(m.group(1)) + "1" + "}" * int(m.group(1))
        if m := re.fullmatch(r"setup(\d+)", word):
            return ", ".join(["x"] * int(m.group(1)))
        if word.startswith("RAW"):
            return match.group(0)  # a placeholder for JSON text, replaced when dumping
        raise KeyError(f"unknown corpus marker @@{word}@@")

    return _MACRO.sub(one, text)


class _Raw:
    """JSON text written as it is (deep nesting, huge numbers, NaN)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _is_generator(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(k in GENERATORS for k in value)


def _generate(spec: dict[str, Any], markers: Markers) -> Any:
    if "$raw" in spec:
        return _Raw(expand_text(str(spec["$raw"]), markers))
    if "$digits" in spec:
        digits = "9" * int(spec["$digits"])
        return digits if spec.get("$as") == "str" else _Raw(digits)
    if "$deep" in spec:
        depth = int(spec["$deep"])
        return _Raw("[" * depth + "]" * depth)
    if "$deep_object" in spec:
        depth = int(spec["$deep_object"])
        return _Raw('{"a":' * depth + "1" + "}" * depth)
    if "$repeat" in spec:
        text = str(spec.get("$prefix", "")) + str(spec["$repeat"]) * int(spec["$times"])
        return expand_text(text, markers)
    if "$many_keys" in spec:
        value = "x" * int(spec.get("$value_len", 1))
        return {f"HOSTILE_{i}": value for i in range(int(spec["$many_keys"]))}
    if "$start_many" in spec:
        return [[1, {"i": i}] for i in range(int(spec["$start_many"]))]
    if "$int_list" in spec:
        return [1] * int(spec["$int_list"])
    if "$chain" in spec:
        return {}  # applied to the recipe by _apply
    raise KeyError(f"unknown generator {sorted(spec)}")


def _key(value: Any, markers: Markers) -> str:
    if _is_generator(value):
        made = _generate(value, markers)
        return made.text if isinstance(made, _Raw) else str(made)
    return expand_text(value, markers) if isinstance(value, str) else json.dumps(value)


def materialise(value: Any, markers: Markers) -> Any:
    """Markers expanded and generators run; deep values become _Raw JSON text."""
    if isinstance(value, str):
        return expand_text(value, markers)
    if _is_generator(value):
        return _generate(value, markers)
    if isinstance(value, dict):
        return {_key(k, markers): materialise(v, markers) for k, v in value.items()}
    if isinstance(value, list):
        return [materialise(v, markers) for v in value]
    return value


def dumps(value: Any, ensure_ascii: bool = True) -> str:
    """JSON text of a materialised value, _Raw parts written as they are."""
    raws: list[str] = []

    def swap(item: Any) -> Any:
        if isinstance(item, _Raw):
            raws.append(item.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    text = json.dumps(swap(value), ensure_ascii=ensure_ascii)
    if raws:
        text = re.sub(r'"@@RAW(\d+)@@"', lambda m: raws[int(m.group(1))], text)
    return text


def _apply(doc: Any, path: list[Any], value: Any, markers: Markers) -> Any:
    """`doc` with `value` put at `path` (parents created); returns the (new) document."""
    if _is_generator(value) and "$chain" in value:
        return _chain(doc, int(value["$chain"]))
    if isinstance(value, dict) and set(value) == {"$key", "$value"}:
        path, value = [*path, value["$key"]], value["$value"]
    if not path:
        return value
    keys = [_key(p, markers) if not isinstance(p, int) else p for p in path]
    target = doc
    for key in keys[:-1]:
        child = target.get(key) if isinstance(target, dict) else None
        if not isinstance(child, dict):
            child = {}
            target[key] = child
        target = child
    if isinstance(value, dict) and value.get("$delete"):
        target.pop(keys[-1], None)
    else:
        target[keys[-1]] = value
    return doc


def _chain(recipe: dict[str, Any], count: int) -> dict[str, Any]:
    """`count` nodes linked one after another behind node 4."""
    first = 5
    recipe["4"] = {**recipe["4"], "output": [first]}
    for i in range(first, first + count):
        node: dict[str, Any] = {"queue": f"hostile.chain.{i}"}
        if i + 1 < first + count:
            node["output"] = [i + 1]
        recipe[str(i)] = node
    return recipe


def recipe_doc(case: Case) -> Any:
    """The case's recipe as JSON data with markers and generators still in it."""
    info = bases()
    if case.whole is not _MISSING:
        return copy.deepcopy(case.whole)
    node = copy.deepcopy(info["bases"][case.base]["node"])
    node["output"] = copy.deepcopy(info["output"])
    dummy = Markers("", "", "")
    if case.kind in ("step", "job"):
        for path, value in case.sets:
            node = _apply(node, path, copy.deepcopy(value), dummy)
    recipe: dict[str, Any] = {"1": node, **copy.deepcopy(info["recipe"])}
    if case.kind in ("recipe", "param"):
        for path, value in case.sets:
            recipe = _apply(recipe, path, copy.deepcopy(value), dummy)
    return recipe


def recipe_text(case: Case, markers: Markers) -> str:
    return dumps(materialise(recipe_doc(case), markers))


def message_doc(case: Case, recipe: Any, recipe_id: str) -> Any:
    """A step message body (workflows' five keys) around `recipe`, with the case's changes."""
    body: Any = {
        "environment": {"ID": recipe_id},
        "payload": {"n": 1},
        "recipe": recipe,
        "recipe-path": [],
        "recipe-pointer": 1,
    }
    if case.kind in ("envelope", "broker"):
        dummy = Markers("", "", "")
        for path, value in case.sets:
            body = _apply(body, path, copy.deepcopy(value), dummy)
    return body


def message_bytes(case: Case, markers: Markers, recipe_id: str) -> bytes:
    """The body a broker would carry for this case."""
    spec = case.spec
    if case.kind == "broker" and "body_text" in spec:
        return expand_text(spec["body_text"], markers).encode("utf-8", "surrogatepass")
    if case.kind == "broker" and "body_hex" in spec:
        return bytes.fromhex(spec["body_hex"])
    if case.kind == "broker" and "body" in spec:
        return dumps(materialise(spec["body"], markers)).encode()
    base_recipe = recipe_doc(case) if case.kind not in ("envelope", "broker") else None
    if base_recipe is None:
        info = bases()
        node = copy.deepcopy(info["bases"]["wrapper"]["node"])
        node["output"] = copy.deepcopy(info["output"])
        base_recipe = {"1": node, **copy.deepcopy(info["recipe"])}
    body = message_doc(case, base_recipe, recipe_id)
    encoding = spec.get("encoding")
    text = dumps(materialise(body, markers), ensure_ascii=encoding is None)
    if "suffix_text" in spec:
        text += spec["suffix_text"]
    if "suffix_key" in spec:
        key, value = spec["suffix_key"]
        text = text[:-1] + f", {json.dumps(key)}: {json.dumps(value)}}}"
    return text.encode(encoding or "utf-8", "surrogatepass")


def message_headers(case: Case, markers: Markers) -> dict[str, Any]:
    headers = case.spec.get("headers", {"workflows-recipe": True})
    made: dict[str, Any] = materialise(headers, markers)
    return made


def profile_bytes(case: Case, markers: Markers) -> bytes:
    if "yaml_hex" in case.spec:
        return bytes.fromhex(case.spec["yaml_hex"])
    return expand_text(case.spec["yaml"], markers).encode("utf-8")


def hostile_strings(case: Case, markers: Markers) -> list[str]:
    """Every string a case puts into a message (keys too), for the line-start check."""
    found: list[str] = []

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 50 or len(found) > 200:
            return
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(value, list):
            for v in value[:50]:
                walk(v, depth + 1)

    for path, value in case.sets:
        for element in path:
            walk(materialise(element, markers))
        made = materialise(value, markers)
        if isinstance(value, dict) and set(value) == {"$key", "$value"}:
            walk(materialise(value["$key"], markers))
            walk(materialise(value["$value"], markers))
        else:
            walk(made)
    for pair in case.params:
        walk(expand_text(pair.partition("=")[2], markers))
    return found


def iter_ids() -> Iterator[str]:
    for case in all_cases():
        yield case.id
