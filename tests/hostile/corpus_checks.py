"""What 'accepted safely' and 'clear error' mean, checked for every hostile input.

The script check compares a rendered job script with a known-good render (the baseline) of
the same profile: the directive lines must be lines the profile's template can write, in its
order, each value one word; the body must be the template's line for line once quoted values
are masked; no line may start with text a message controls; `bash -n` must accept it.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHIPPED_PROFILES = REPO / "site-configs"
TEMPLATES = REPO / "templates"
PREFIXES = ("#SBATCH", "#$", "# zbatch-local:")
# One directive value: a single word with nothing a shell or a directive parser reads.
VALUE = r"[^\s'\"`\\]+"
NUMBER_EXPRESSIONS = {
    "job.cpus", "job.tasks", "job.nodes", "job.gpus", "job.gpus_per_node", "job.memory_mb",
    "memory_per_cpu_mb", "job.time_limit_s",
}  # fmt: skip
EXPRESSION = re.compile(r"\{\{\s*(.*?)\s*\}\}")
BLOCK = re.compile(r"\{%-?\s*(if|for|elif|else|endif|endfor)\b")
# One shell word: plain safe characters, '...' , $'...' or "..." without expansions.
WORD = re.compile(
    r"""(?:[A-Za-z0-9_@%+=:,./-]+|'[^']*'|\$'(?:[^'\\]|\\.)*'|"(?:[^"\\$`]|\\.)*")+"""
)
SAFE_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
EXPORT = re.compile(r"export ([A-Za-z_][A-Za-z0-9_]*)=(.*)")
EXIT_RECORD = re.compile(r"zbatch_exit_record=(.*)")
CD = re.compile(r"cd (.*) \|\| exit 1")
# What some tool treats as the end of a line: text after one of these starts a line.
LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
VALUE_OPTIONS = ("--wrap", "--recipewrapper", "--embedded-db", "--rabbit-conf")


def shipped_profiles() -> list[Path]:
    # reference.yaml lists every key at its default: documentation, not a site's settings.
    return sorted(p for p in SHIPPED_PROFILES.glob("*.yaml") if p.stem != "reference")


# ---------------------------------------------------------------------------------------------
# The template's directives


@dataclass(frozen=True)
class DirectiveRule:
    pattern: re.Pattern[str]
    mandatory: bool
    repeatable: bool
    source: str


@dataclass(frozen=True)
class ProfileShape:
    """What the script check needs to know of a profile."""

    name: str
    scheduler: str
    rules: tuple[DirectiveRule, ...]


def _expression_pattern(expression: str, profile: Any) -> str:
    name = expression.split("|")[0].strip()
    if name.startswith("resources."):
        return re.escape(str(getattr(profile.resources, name.split(".", 1)[1])))
    if name in NUMBER_EXPRESSIONS:
        return r"[0-9]+"
    if name == "time_clock":
        return r"[0-9]+:[0-5][0-9]:[0-5][0-9]"
    return VALUE


def template_text(profile: Any) -> str:
    name = f"{profile.scheduler}.sh.j2"
    if profile.template_dir:
        site = Path(os.path.expanduser(profile.template_dir)) / name
        if site.is_file():
            return site.read_text()
    return (TEMPLATES / name).read_text()


@cache
def profile_shape(profile_path: str) -> ProfileShape:
    """The directive lines the profile's template can write, in order."""
    from zbatch.model.profiles import load_profile_file

    profile = load_profile_file(profile_path)
    stack: list[str] = []
    rules: list[DirectiveRule] = []
    for raw in template_text(profile).splitlines():
        block = BLOCK.match(raw.strip())
        if block:
            word = block.group(1)
            if word in ("if", "for"):
                stack.append(word)
            elif word in ("endif", "endfor") and stack:
                stack.pop()
            continue
        if not raw.startswith(PREFIXES):
            continue
        loop = re.fullmatch(r"(#SBATCH|#\$) \{\{\s*directive\s*\}\}", raw)
        if loop:
            choices = [re.escape(f"{loop.group(1)} {d}") for d in profile.extra_directives]
            pattern = "(?:" + "|".join(choices) + ")" if choices else r"(?!x)x"
        else:
            parts = EXPRESSION.split(raw)
            pattern = "".join(
                _expression_pattern(part, profile) if i % 2 else re.escape(part)
                for i, part in enumerate(parts)
            )
        rules.append(DirectiveRule(re.compile(pattern), not stack, "for" in stack, raw))
    return ProfileShape(profile.name, profile.scheduler, tuple(rules))


# ---------------------------------------------------------------------------------------------
# The script check


def _tokens(line: str) -> list[str] | None:
    """The words of a command line, each one WORD; None if it is not such a line."""
    tokens: list[str] = []
    pos = 0
    while pos < len(line):
        match = WORD.match(line, pos)
        if not match:
            return None
        tokens.append(match.group())
        pos = match.end()
        if pos < len(line):
            if line[pos] != " ":
                return None
            pos += 1
    return tokens


def _header_end(lines: list[str]) -> int:
    end = 1
    while end < len(lines) and lines[end].startswith(PREFIXES):
        end += 1
    return end


def _block(body: list[str]) -> tuple[int, int] | None:
    """Indices of the `(` and `) &` lines around the job's commands."""
    after_cd = next((i for i, line in enumerate(body) if CD.fullmatch(line)), None)
    if after_cd is None:
        return None
    start = next((i for i in range(after_cd, len(body)) if body[i] == "("), None)
    end = max((i for i, line in enumerate(body) if line == ") &"), default=None)
    if start is None or end is None or end <= start:
        return None
    return start, end


def _skeleton(body: list[str], keep_exports: set[str]) -> tuple[list[str], list[str]]:
    """Body lines with quoted values masked; extra exports dropped. (skeleton, problems)."""
    out: list[str] = []
    problems: list[str] = []
    for line in body:
        if not line.strip():
            continue
        if m := EXPORT.fullmatch(line):
            if not WORD.fullmatch(m.group(2)):
                out.append(line)
            elif m.group(1) in keep_exports:
                out.append(f"export {m.group(1)}=<value>")
            continue
        if (m := EXIT_RECORD.fullmatch(line)) and WORD.fullmatch(m.group(1)):
            out.append("zbatch_exit_record=<value>")
            continue
        if (m := CD.fullmatch(line)) and WORD.fullmatch(m.group(1)):
            out.append("cd <value> || exit 1")
            continue
        out.append(line)
    return out, problems


def _short(text: str, limit: int = 90) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _wrapper_line_problems(line: str, baseline_line: str) -> list[str]:
    tokens, expected = _tokens(line), _tokens(baseline_line)
    if tokens is None:
        return [f"wrapper command is not a list of quoted words: {_short(line)}"]
    assert expected is not None, baseline_line
    if "--recipewrapper" not in expected:
        return []
    fixed = expected.index("--recipewrapper") + 2
    if len(tokens) < fixed:
        return [f"wrapper command lost words: {_short(line)}"]
    for i in range(fixed):
        masked = i > 0 and expected[i - 1] in VALUE_OPTIONS
        if not masked and tokens[i] != expected[i]:
            return [f"wrapper command differs at word {i}: {_short(tokens[i])}"]
    for token in tokens[fixed:]:
        if not SAFE_WORD.fullmatch(token):
            return [f"wrapper command has an unexpected word {_short(token)}"]
    return []


LIMIT_GROUPS = {"time limit": r"time|h_rt", "memory": r"mem"}


def _match_directives(header: list[str], shape: ProfileShape) -> tuple[set[int], list[str]]:
    """The template rules the header lines match, in order; and the lines that match none."""
    index = -1
    used: set[int] = set()
    unmatched: list[str] = []
    for line in header:
        found = None
        for i in range(max(index, 0), len(shape.rules)):
            rule = shape.rules[i]
            if (i > index or (i == index and rule.repeatable)) and rule.pattern.fullmatch(line):
                found = i
                break
        if found is None:
            unmatched.append(line)
            continue
        index = found
        used.add(found)
    return used, unmatched


def script_problems(
    script: str,
    baseline: str,
    shape: ProfileShape,
    *,
    mode: str,
    hostile: Iterable[str] = (),
    check_bash: bool = True,
) -> list[str]:
    """Why `script` is not the template's script with only quoted values changed ([] if it is).

    `mode` is "wrapper" (the job runs `zbatch wrap`) or "commands" (the recipe's own shell
    lines, trusted by design where the profile allows them, so only their number is free).
    """
    problems: list[str] = []
    lines = script.split("\n")
    base_lines = baseline.split("\n")
    if lines[0] != base_lines[0]:
        problems.append(f"first line is {_short(lines[0])}, not {base_lines[0]!r}")
    # Directives: from the template, in its order, one word per value, all in the header.
    end = _header_end(lines)
    used, unmatched = _match_directives(lines[1:end], shape)
    problems += [
        f"directive not from the template (or out of order): {_short(u)}" for u in unmatched
    ]
    for i, rule in enumerate(shape.rules):
        if rule.mandatory and i not in used:
            problems.append(f"template directive missing: {rule.source}")
    # A limit the known-good step has (time, memory) must not vanish: the cluster's default
    # may be no limit at all, past the profile's hard limits.
    base_used, _ = _match_directives(base_lines[1 : _header_end(base_lines)], shape)
    for group, words in LIMIT_GROUPS.items():
        rules = {i for i, r in enumerate(shape.rules) if re.search(words, r.source)}
        if rules & base_used and not rules & used:
            problems.append(f"limit directive dropped: {group}")
    body, base_body = lines[end:], base_lines[_header_end(base_lines) :]
    for line in body:
        if line.lstrip(" \t").startswith(PREFIXES):
            problems.append(f"directive line after the header: {_short(line)}")
    # The body: the template's lines, quoted values masked.
    block, base_block = _block(body), _block(base_body)
    assert base_block is not None, "the baseline has no command block"
    message_lines: set[int] = set()
    if block is None:
        problems.append("the job's command block `( ... ) &` is missing or broken")
        outside_block = body
    else:
        inner = body[block[0] + 1 : block[1]]
        base_inner = base_body[base_block[0] + 1 : base_block[1]]
        if mode == "wrapper":
            if len(inner) != len(base_inner):
                problems.append(f"command block has {len(inner)} lines, the template writes 1")
            else:
                problems += _wrapper_line_problems(inner[0], base_inner[0])
        else:
            message_lines = set(range(block[0] + 1, block[1]))
        outside_block = [*body[: block[0]], "<commands>", *body[block[1] + 1 :]]
    base_outside = [*base_body[: base_block[0]], "<commands>", *base_body[base_block[1] + 1 :]]
    keep = {m.group(1) for line in base_outside if (m := EXPORT.fullmatch(line))}
    got, extra = _skeleton(outside_block, keep)
    want, _ = _skeleton(base_outside, keep)
    problems += extra
    if got != want:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        here = got[first] if first < len(got) else "<end of script>"
        there = want[first] if first < len(want) else "<end of script>"
        problems.append(
            f"body differs from the template: {_short(here)} where it has {_short(there)}"
        )
    for line in outside_block:
        if (m := EXPORT.fullmatch(line)) and not WORD.fullmatch(m.group(2)):
            problems.append(f"export value is not one quoted word: {_short(line)}")
    # Characters no job script should carry raw (the baseline's own are fine).
    raw = {c for c in script if _is_control(c)} - set(baseline)
    for char in sorted(raw):
        kind = (
            "a lone surrogate" if unicodedata.category(char) == "Cs" else "a raw control character"
        )
        problems.append(f"script holds {kind} {char!r}")
    # No line may start with text that a message controls.
    base_set = set(base_lines)
    body_offset = end
    for piece in {p.lstrip(" \t") for s in hostile for p in LINE_BREAK.split(s)[1:]}:
        if not piece:
            continue
        for number, line in enumerate(lines):
            if number - body_offset in message_lines or line in base_set:
                continue
            if line.lstrip(" \t").startswith(piece):
                problems.append(f"a line starts with message text {_short(piece)}: {_short(line)}")
                break
    if check_bash and not any("surrogate" in p for p in problems):
        error = bash_syntax_error(script)
        if error:
            problems.append(f"bash -n fails: {error}")
    return problems


def _is_control(char: str) -> bool:
    if char in "\n\t":
        return False
    return unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029"


def bash_syntax_error(script: str) -> str | None:
    with tempfile.NamedTemporaryFile("wb", suffix=".sh", delete=False) as handle:
        handle.write(script.encode("utf-8", "surrogatepass"))
        path = handle.name
    try:
        done = subprocess.run(["bash", "-n", path], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[0][-200:]


# ---------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class CliOutcome:
    exit_code: int
    stdout: str
    stderr: str
    crash: str | None = None  # an exception that escaped the command (in-process runs)
    timed_out: bool = False


def run_inprocess(args: list[str], env: Mapping[str, str | None] | None = None) -> CliOutcome:
    """The `zbatch` click command in this process (what the console script runs)."""
    from click.testing import CliRunner

    from zbatch.cli import main

    result = CliRunner().invoke(main, args, env=dict(env or {}), catch_exceptions=True)
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = f"{type(result.exception).__name__}: {str(result.exception)[:160]}"
    return CliOutcome(
        result.exit_code,
        result.stdout_bytes.decode("utf-8", "surrogateescape"),
        result.stderr_bytes.decode("utf-8", "surrogateescape"),
        crash,
    )


def run_subprocess(
    args: list[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    memory_limit: int | None = None,
) -> CliOutcome:
    """The real `zbatch` command (`python -m zbatch` in this checkout)."""

    def limit() -> None:  # pragma: no cover - runs in the child
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    try:
        done = subprocess.run(
            [sys.executable, "-m", "zbatch", *args],
            cwd=REPO,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            preexec_fn=limit if memory_limit else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode("utf-8", "surrogateescape")
        err = (exc.stderr or b"").decode("utf-8", "surrogateescape")
        return CliOutcome(-1, out, err, None, timed_out=True)
    return CliOutcome(
        done.returncode,
        done.stdout.decode("utf-8", "surrogateescape"),
        done.stderr.decode("utf-8", "surrogateescape"),
    )


def traceback_problems(outcome: CliOutcome) -> list[str]:
    if outcome.timed_out:
        return ["timed out"]
    if outcome.crash:
        return [f"traceback ({outcome.crash.split(':')[0]})"]
    text = outcome.stdout + outcome.stderr
    if "Traceback (most recent call last)" in text:
        last = [ln for ln in outcome.stderr.splitlines() if ln and not ln.startswith(" ")]
        kind = last[-1].split(":")[0] if last else "?"
        return [f"traceback ({kind})"]
    if outcome.exit_code < 0:
        return [f"killed by signal {-outcome.exit_code}"]
    return []


def error_problems(outcome: CliOutcome) -> list[str]:
    """Why this failed run is not a clear error: exit 2, one `zbatch: error:` line."""
    problems = []
    if outcome.exit_code != 2:
        problems.append(f"error exit code {outcome.exit_code}, not 2")
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("zbatch: error: "):
        shown = _short(outcome.stderr.strip(), 120)
        problems.append(f"stderr is not one 'zbatch: error:' line: {shown}")
    elif any(_is_control(c) for c in lines[0]):
        problems.append("error line carries raw control characters")
    elif len(lines[0]) > 4000:
        problems.append(f"error line is {len(lines[0])} characters long")
    if "#!/bin/bash" in outcome.stdout:
        problems.append("printed a script and failed")
    return problems


def classify(outcome: CliOutcome, expected: str) -> tuple[str, list[str]]:
    """("error" | "accepted" | "broken", problems) for a command expected to exit 0 or 2."""
    problems = traceback_problems(outcome)
    if problems:
        return "broken", problems
    if outcome.exit_code == 0:
        if expected == "error":
            return "accepted", ["accepted, but must be refused"]
        return "accepted", []
    problems = error_problems(outcome)
    if expected == "accept":
        problems.append("refused, but must be accepted: " + _short(outcome.stderr.strip(), 150))
    return "error", problems


# ---------------------------------------------------------------------------------------------
# Files outside the workdir_root


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below `root` (symlinks not followed): kind, size, mtime, mode, target."""
    found: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return found


def snapshot_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    changed = [f"created {k}" for k in sorted(set(after) - set(before))]
    changed += [f"removed {k}" for k in sorted(set(before) - set(after))]
    changed += [f"changed {k}" for k in sorted(set(after) & set(before)) if after[k] != before[k]]
    return changed


def tracebacks_in(root: Path) -> list[str]:
    """Job output files below `root` that hold a Python traceback."""
    found = []
    for path in sorted(root.rglob("zbatch-*.err")) + sorted(root.rglob("zbatch-*.out")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if "Traceback (most recent call last)" in text:
            last = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")]
            found.append(f"traceback in job output ({last[-1][:80] if last else '?'})")
    return found


# ---------------------------------------------------------------------------------------------
# Verdicts, for the session summary


@dataclass
class Record:
    case: str
    mode: str
    target: str
    verdict: str  # "clear error", "accepted safely" or "FAILED"
    problems: list[str]


RECORDS: list[Record] = []


def record(case: str, mode: str, target: str, verdict: str, problems: list[str]) -> list[str]:
    """Keep one verdict; returns the problems prefixed with where they happened."""
    final = "FAILED" if problems else {"error": "clear error"}.get(verdict, "accepted safely")
    RECORDS.append(Record(case, mode, target, final, list(problems)))
    return [f"{mode} {target}: {p}" for p in problems]


def cause(problem: str) -> str:
    """A problem without its specifics, to group failing cases."""
    text = re.sub(r"\s*\(.*$", "", problem.split(": ")[0]) if ": " in problem else problem
    if problem.startswith("traceback ("):
        return problem.split(")")[0] + ")"
    return text.strip() or problem
