"""Issue 10 item 6: every hostile input of the corpus through the real CLI and dispatcher.

Each input ends in one of two verdicts, or fails the test:
- clear error: exit 2 and exactly one `zbatch: error: ...` line on stderr, no traceback (the
  dispatcher: the message is dead-lettered with a reason and the next valid message is still
  processed);
- accepted safely: the job script has exactly the template's directives and commands (only
  quoted values differ from a known-good render), no line starts with message text, `bash -n`
  accepts it; nothing ran that was not asked for (canaries), nothing was written outside the
  workdir_root.

`zbatch render` runs with every shipped profile (and a local profile with a workdir_root) in
this process through the click command (start-up would dominate otherwise); a subset runs as
real `python -m zbatch` subprocesses. The corpus lives in tests/hostile/corpus/*.json; the
session summary prints the verdict counts and the failing cases by cause, and
`ZBATCH_HOSTILE_REPORT=FILE` writes every verdict to FILE as JSON.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import HostileWorld, Target
from tests.hostile.corpus_cases import (
    Case,
    Markers,
    ProfileFacts,
    all_cases,
    bases,
    cases_for,
    expand_text,
    hostile_strings,
    message_bytes,
    message_headers,
    profile_bytes,
    recipe_text,
)
from tests.hostile.corpus_checks import (
    CliOutcome,
    classify,
    error_problems,
    profile_shape,
    record,
    run_inprocess,
    run_subprocess,
    script_problems,
    snapshot,
    snapshot_changes,
    traceback_problems,
    tracebacks_in,
)

MIN_CORPUS = 300
MEMORY_LIMIT = 1 << 30  # isolated cases: a 1.5 GB allocation must fail, not swap
ISOLATED_TIMEOUT = 10  # an alias bomb or a huge format width must not take longer
RABBIT_WAIT = 6  # seconds for the dispatcher to settle a message and the valid one after it
RENDER_CASES = cases_for("render")
SUBPROCESS_EVERY = 10


def ids(case: Case) -> str:
    return case.id


def check(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The corpus itself


def test_corpus_is_large_distinct_and_covers_every_field() -> None:
    cases = all_cases()
    assert len({c.id for c in cases}) == len(cases), "case ids must be unique"
    distinct = {c.fingerprint() for c in cases}
    assert len(distinct) == len(cases), "two cases hold the same input"
    assert len(distinct) >= MIN_CORPUS
    fields = {str(c.spec.get("field", "")) for c in cases}
    for name in (
        "scheduler", "partition", "job_name", "environment.key", "environment.value",
        "cpus_per_task", "tasks", "nodes", "memory_per_node", "min_memory_per_cpu",
        "time_limit", "gpus", "gpus_per_node", "exclusive", "account", "constraints", "prefer",
        "qos", "array", "commands",
    ):  # fmt: skip
        assert f"cluster.{name}" in fields, name
    for name in (
        "workingdir", "recipewrapper", "recipefile", "recipeenvironment", "wrapper",
        "legacy.cluster", "legacy.cluster_project", "legacy.cluster_queue",
        "legacy.cluster_submission_parameters", "legacy.cluster_commands", "job.xia2",
        "job.xia2.images", "job.ispyb_parameters", "job.working_directory", "job.timeout",
        "job.fast_ep.value", "job.generic.command", "job.generic.result_files",
    ):  # fmt: skip
        assert name in fields, name
    kinds = Counter(c.kind for c in cases)
    assert all(kinds[k] for k in ("recipe", "param", "envelope", "broker", "profile")), kinds
    assert len(cases_for("dispatch")) >= 50
    assert sum(1 for c in RENDER_CASES if subprocess_target(c) is not None) >= 100


def test_run_cases_only_touch_scratch_paths() -> None:
    """Cases that really run jobs name no system file: their victims live in @@outside@@."""
    for case in cases_for("run") + cases_for("dispatch"):
        if case.spec.get("field") == "job.generic.result_files":
            continue  # globs that are read, never written
        text = json.dumps([case.sets, case.params], ensure_ascii=True)
        for bad in ("/etc/", "/root", "~", "/home", "/var"):
            assert bad not in text, (case.id, bad)


def test_every_baseline_renders(hostile: HostileWorld) -> None:
    """The known-good steps render with every profile (so each refusal is the value's)."""
    for target in hostile.targets:
        assert hostile.baseline(target, "wrapper") is not None, target.name
        if target.facts.allow_commands:
            assert hostile.baseline(target, "commands") is not None, target.name
        script = hostile.baseline(target, "wrapper")
        assert script is not None
        shape = profile_shape(str(target.path))
        assert script_problems(script, script, shape, mode="wrapper") == [], target.name


def test_the_script_check_catches_known_injections(hostile: HostileWorld) -> None:
    """The helper itself: each classic injection into a known-good script is reported."""
    for target in hostile.targets:
        good = hostile.baseline(target, "wrapper")
        assert good is not None
        shape = profile_shape(str(target.path))
        lines = good.split("\n")
        cd = next(i for i, line in enumerate(lines) if line.startswith("cd "))
        prefix = "#SBATCH" if target.facts.scheduler == "slurm" else "#$"
        if target.facts.scheduler == "local":
            prefix = "# zbatch-local:"
        bad = {
            "export without value": [*lines[:cd], "export X", "='$(id)'", *lines[cd:]],
            "directive in the body": [*lines[:cd], f"{prefix} --uid=0", *lines[cd:]],
            "directive in the header": [*lines[:2], f"{prefix} -l h_rt=999:00:00", *lines[2:]],
            "command after cd": [*lines[:cd], "cd /x", "touch /tmp/y || exit 1", *lines[cd + 1 :]],
            "extra command": [*lines[: cd + 2], lines[cd + 2] + "; touch /tmp/y", *lines[cd + 3 :]],
            "directive with a space": [lines[0], lines[1] + " x", *lines[2:]],
            "raw escape": [*lines[:cd], "export A='\x1b[2J'", *lines[cd:]],
            "unbalanced quote": [*lines[:cd], "export A='x", *lines[cd:]],
        }
        for name, script in bad.items():
            found = script_problems("\n".join(script), good, shape, mode="wrapper")
            assert found, (target.name, name)
        injected = [*lines[:cd], "touch /tmp/hostile-line", *lines[cd:]]
        found = script_problems(
            "\n".join(injected), good, shape, mode="wrapper", hostile=["x\ntouch /tmp/hostile-line"]
        )
        assert any("starts with message text" in p for p in found), target.name


# ---------------------------------------------------------------------------------------------
# zbatch render


def render_once(
    case: Case, target: Target, hostile: HostileWorld, tmp_path: Path, *, subprocess: bool = False
) -> list[str]:
    markers = hostile.render_markers(target, case)
    path = tmp_path / f"recipe-{target.name}.json"
    path.write_text(recipe_text(case, markers))
    args = ["render", "--profile", str(target.path), "--recipe", str(path)]
    for pair in case.params:
        args += ["--param", expand_text(pair, markers)]
    if subprocess:
        limit = MEMORY_LIMIT if case.isolate else None
        outcome = run_subprocess(
            args, timeout=ISOLATED_TIMEOUT if case.isolate else 60, memory_limit=limit
        )
    else:
        outcome = run_inprocess(args)
    expected = case.expected("render", target.facts)
    verdict, problems = classify(outcome, expected)
    if verdict == "accepted" and not problems:
        baseline = hostile.baseline(target, case.base)
        if baseline is None:
            problems.append(f"accepted, but the {case.base} baseline does not render")
        else:
            problems += script_problems(
                outcome.stdout,
                baseline,
                profile_shape(str(target.path)),
                mode=case.mode,
                hostile=hostile_strings(case, markers),
            )
    problems += [f"canary created: {name}" for name in hostile.canaries_of(case)]
    mode = "render (subprocess)" if subprocess else "render"
    return record(case.id, mode, target.name, verdict, problems)


@pytest.mark.parametrize("case", [c for c in RENDER_CASES if not c.isolate], ids=ids)
def test_render_every_profile(case: Case, hostile: HostileWorld, tmp_path: Path) -> None:
    problems: list[str] = []
    for target in hostile.targets:
        problems += render_once(case, target, hostile, tmp_path)
    check(problems)


def subprocess_target(case: Case) -> int | None:
    """Which profile (index) a case runs with as a real subprocess, or None."""
    if case.no_subprocess:
        return None
    index = RENDER_CASES.index(case)
    if case.isolate or index % SUBPROCESS_EVERY == 0:
        return index // SUBPROCESS_EVERY
    return None


@pytest.mark.parametrize(
    "case", [c for c in RENDER_CASES if subprocess_target(c) is not None], ids=ids
)
def test_render_subprocess(case: Case, hostile: HostileWorld, tmp_path: Path) -> None:
    index = subprocess_target(case)
    assert index is not None
    target = hostile.targets[index % len(hostile.targets)]
    check(render_once(case, target, hostile, tmp_path, subprocess=True))


# ---------------------------------------------------------------------------------------------
# zbatch run (jobs really run: canaries, victims and job output are checked)


def outside_state(hostile: HostileWorld, case: Case) -> dict[str, Any]:
    return {
        "case": snapshot(hostile.outside_for(case.slug)),
        "top": sorted(p.name for p in hostile.outside.iterdir()),
    }


def outside_problems(hostile: HostileWorld, case: Case, before: dict[str, Any]) -> list[str]:
    after = outside_state(hostile, case)
    problems = [
        f"file outside workdir_root {change}"
        for change in snapshot_changes(before["case"], after["case"])
    ]
    problems += [
        f"file outside workdir_root created {n}" for n in set(after["top"]) - set(before["top"])
    ]
    return problems


def staged_script_problems(
    case: Case, hostile: HostileWorld, root: Path, profile: str, markers: Markers
) -> list[str]:
    target = next(t for t in hostile.targets if t.name == "hostile-local")
    target = replace(target, path=hostile.profiles[profile], root=str(root))
    problems = []
    baseline = hostile.baseline(target, case.base, root=str(root))
    if baseline is None:
        return [f"the {case.base} baseline does not render with the run profile"]
    shape = profile_shape(str(hostile.profiles[profile]))
    for script in sorted(root.rglob("zbatch-*.sh")):
        text = script.read_bytes().decode("utf-8", "surrogateescape")
        problems += script_problems(
            text, baseline, shape, mode=case.mode, hostile=hostile_strings(case, markers)
        )
    return problems


@pytest.mark.parametrize("case", cases_for("run"), ids=ids)
def test_run_local(case: Case, hostile: HostileWorld, tmp_path: Path) -> None:
    root = hostile.case_root("run", case)
    markers = Markers(
        root=str(root),
        outside=str(hostile.outside_for(case.slug)),
        canary=hostile.canary("run", case),
    )
    before = outside_state(hostile, case)
    path = tmp_path / "recipe.json"
    path.write_text(recipe_text(case, markers))
    profile = hostile.profiles[case.run_profile]
    args = ["run", str(path), "--profile", str(profile), "--timeout", "90"]
    for pair in case.params:
        args += ["--param", expand_text(pair, markers)]
    outcome = run_inprocess(args)
    expected = case.expected("run", replace_facts(hostile, profile))
    problems = traceback_problems(outcome)
    verdict = "broken"
    if not problems:
        if outcome.exit_code == 2:
            verdict, problems = "error", error_problems(outcome)
        elif "submitted as" in outcome.stdout:
            verdict = "accepted"
            if expected == "error":
                problems.append("accepted, but must be refused")
            problems += staged_script_problems(case, hostile, root, case.run_profile, markers)
        elif "refused" in outcome.stdout and outcome.exit_code == 1:
            verdict = "error"
        else:
            tail = " | ".join(outcome.stdout.strip().splitlines()[-2:])[:160]
            problems.append(f"neither submitted nor refused: exit {outcome.exit_code}: {tail}")
    problems += tracebacks_in(root)
    problems += [f"canary created: {name}" for name in hostile.canaries_of(case)]
    problems += outside_problems(hostile, case, before)
    check(record(case.id, "run", "hostile-run", verdict, problems))


def replace_facts(_hostile: HostileWorld, profile: Path) -> Any:
    from tests.hostile.conftest import facts

    return facts(profile)


# ---------------------------------------------------------------------------------------------
# zbatch wrap --dry-run (the in-job runner turns job_parameters into an argument list)

PHIL_ARGUMENT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=(?!-)[^\s;{}\"'=$\\]+"
)


def wrap_problems(outcome: CliOutcome, name: str) -> list[str]:
    try:
        shown = json.loads(outcome.stdout)
        argv, cwd = shown["argv"], shown["cwd"]
    except (ValueError, KeyError, TypeError):
        return [f"dry run printed no command: {outcome.stdout[:100]!r}"]
    problems = []
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return [f"argv is not a list of strings: {str(argv)[:100]}"]
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        problems.append(f"working directory is not an absolute path: {str(cwd)[:100]!r}")
    for arg in [*argv, str(cwd)]:
        if "\0" in arg or any("\ud800" <= c <= "\udfff" for c in arg):
            problems.append(f"argument holds a NUL or a lone surrogate: {arg[:60]!r}")
    if name in ("xia2", "fast_ep"):
        if argv[0] != name:
            problems.append(f"runs {argv[0][:60]!r}, not {name}")
        for arg in argv[1:]:
            if not PHIL_ARGUMENT.fullmatch(arg) or not arg.isprintable():
                problems.append(f"argument is not one phil assignment: {arg[:80]!r}")
    return problems


def wrap_once(case: Case, hostile: HostileWorld, tmp_path: Path, root: Path | None) -> None:
    """`zbatch wrap --dry-run` on the case's step message (with `--workdir-root` if given)."""
    from tests.hostile.conftest import plant

    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        plant(root, hostile.outside_for("wrap"))
    markers = Markers(
        root=str(root or hostile.work / "wrap"),
        outside=str(hostile.outside_for("wrap")),
        canary=hostile.canary("wrap", case),
    )
    body = message_bytes(case, markers, str(uuid.uuid4()))
    path = tmp_path / "zbatch-hostile-1.recipewrap.json"
    path.write_bytes(body)
    node = bases()["bases"][case.base]["node"]
    name = str(node["parameters"].get("wrapper", "xia2"))
    env: dict[str, str | None] = {"ZBATCH_CPUS": None, "SLURM_CPUS_PER_TASK": None, "NSLOTS": None}
    for key, value in case.spec.get("env", {}).items() if case.kind == "jobenv" else []:
        env[key] = expand_text(value, markers)
    args = ["wrap", "--wrap", name, "--recipewrapper", str(path), "--dry-run", "--json"]
    facts = None
    if root is not None:
        args += ["--workdir-root", str(root)]
        facts = ProfileFacts(
            "wrap-in-root", "local", rooted=True, allow_commands=True, planted=True
        )
    outcome = run_inprocess(args, env)
    verdict, problems = classify(outcome, case.expected("wrap", facts))
    if verdict == "accepted" and not problems:
        problems += wrap_problems(outcome, name)
    problems += [f"canary created: {n}" for n in hostile.canaries_of(case)]
    mode = "wrap" if root is None else "wrap --workdir-root"
    check(record(case.id, mode, name, verdict, problems))


@pytest.mark.parametrize("case", cases_for("wrap"), ids=ids)
def test_wrap_dry_run(
    case: Case, hostile: HostileWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    wrap_once(case, hostile, tmp_path, None)


# A dry run builds the command and the tool's folder; result folders are confined when the
# tool has run (and at submission), so they are not in this set.
IN_ROOT_FIELDS = ("job.working_directory",)


@pytest.mark.parametrize(
    "case", [c for c in cases_for("wrap") if c.spec.get("field") in IN_ROOT_FIELDS], ids=ids
)
def test_wrap_dry_run_in_workdir_root(
    case: Case, hostile: HostileWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the job, `zbatch wrap` confines the wrapper's own folders to the profile's root."""
    root = tmp_path / "root"
    (root / "step").mkdir(parents=True)
    monkeypatch.chdir(root / "step")  # a job runs in its workdir, inside the root
    wrap_once(case, hostile, tmp_path, root)


def test_wrap_in_workdir_root_accepts_the_known_good_step(
    hostile: HostileWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "step").mkdir(parents=True)
    monkeypatch.chdir(root / "step")
    good = Case(id="baseline.wrap", kind="job", expect="accept", spec={"path_field": True})
    wrap_once(good, hostile, tmp_path, root)


# ---------------------------------------------------------------------------------------------
# zbatch profiles check (and render with the profile, which must not crash either)


@pytest.mark.parametrize("case", cases_for("profiles"), ids=ids)
def test_profiles_check(case: Case, hostile: HostileWorld, tmp_path: Path) -> None:
    markers = Markers(
        root=str(hostile.work / "profiles"),
        outside=str(hostile.outside_for("render")),
        canary=hostile.canary("profile", case),
        world_writable=str(hostile.world_writable),
    )
    path = tmp_path / "hostile-profile.yaml"
    path.write_bytes(profile_bytes(case, markers))
    args = ["profiles", "check", str(path)]
    isolated = case.isolate or all_cases().index(case) % 3 == 0
    if isolated:
        outcome = run_subprocess(args, timeout=ISOLATED_TIMEOUT, memory_limit=MEMORY_LIMIT)
    else:
        outcome = run_inprocess(args)
    expected = case.expected("profiles")
    if expected == "warn":
        verdict, problems = classify(outcome, "accept")
        words = str(case.spec.get("warn_words", ""))
        if outcome.exit_code == 0 and words not in outcome.stdout + outcome.stderr:
            problems.append(f"accepted without a warning about {words}")
    else:
        verdict, problems = classify(outcome, expected)
    if verdict == "accepted" and not problems:
        recipe = tmp_path / "recipe.json"
        recipe.write_text(recipe_text(Case(id="baseline", kind="step"), markers))
        rendered = run_inprocess(["render", "--profile", str(path), "--recipe", str(recipe)])
        problems += [f"render with it: {p}" for p in traceback_problems(rendered)]
    problems += [f"canary created: {n}" for n in hostile.canaries_of(case)]
    mode = "profiles check (subprocess)" if isolated else "profiles check"
    check(record(case.id, mode, "-", verdict, problems))


# ---------------------------------------------------------------------------------------------
# Broker settings: a clear error, and never the password


@pytest.mark.parametrize("case", cases_for("admin"), ids=ids)
def test_broker_settings(case: Case, tmp_path: Path) -> None:
    env: dict[str, str | None] = {"ZBATCH_RABBIT_URL": None, "ZBATCH_RABBIT_CONF": None}
    env.update(case.spec.get("env", {}))
    args = ["dlq", "list", "--transport", "pika", "--queue", "zbatch-hostile.none"]
    if "ini" in case.spec:
        ini = tmp_path / "rabbit.ini"
        ini.write_text(case.spec["ini"])
        args += ["--rabbit-conf", str(ini)]
    outcome = run_inprocess(args, env)
    problems = traceback_problems(outcome)
    verdict = "error"
    if not problems:
        if outcome.exit_code == 0:
            verdict = "accepted"
            problems.append("accepted, but must be refused")
        else:
            problems += [
                p for p in error_problems(outcome) if not p.startswith("error exit code 1")
            ]
    for secret in case.spec.get("secret", []):
        if secret in outcome.stdout + outcome.stderr:
            problems.append("the password is shown")
    check(record(case.id, "broker settings", "-", verdict, problems))


# ---------------------------------------------------------------------------------------------
# The dispatcher: embedded queue (in this process) and RabbitMQ (a real `zbatch dispatcher`)


DISPATCH_CASES = cases_for("dispatch")
SENTINEL_ID = "hostile-sentinel"


def dispatch_markers(hostile: HostileWorld, case: Case, submitted: str) -> tuple[Path, Markers]:
    root = hostile.case_root("dispatch", case)
    markers = Markers(
        root=str(root),
        outside=str(hostile.outside_for(case.slug)),
        canary=hostile.canary("dispatch", case),
        submitted=submitted,
    )
    return root, markers


def sentinel_body(hostile: HostileWorld, submitted: str) -> bytes:
    root = hostile.work / "dispatch-sentinel"
    root.mkdir(exist_ok=True)
    markers = Markers(str(root), str(hostile.outside_for("render")), "/nonexistent", submitted)
    good = Case(id="sentinel", kind="step")
    return message_bytes(good, markers, SENTINEL_ID)


def dispatch_body(case: Case, markers: Markers) -> tuple[bytes, dict[str, Any]]:
    body = message_bytes(case, markers, f"hostile-{case.slug}")
    headers = (
        message_headers(case, markers) if case.kind == "broker" else {"workflows-recipe": True}
    )
    return body, headers


def wait_for_jobs(hostile: HostileWorld, timeout: float = 60) -> None:
    """Accepted messages start real jobs: let them end before looking for damage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for path in (hostile.localbatch / "jobs").glob("*.json"):
            try:
                states.append(json.loads(path.read_text()).get("state"))
            except (OSError, ValueError):
                states.append("PENDING")
        if not any(state in ("PENDING", "RUNNING") for state in states):
            return
        time.sleep(0.2)


def accepted_problems(
    case: Case, hostile: HostileWorld, root: Path, markers: Markers, dispatch_mode: str
) -> list[str]:
    problems = []
    if (
        case.expected(dispatch_mode, replace_facts(hostile, hostile.profiles["dispatch"]))
        == "error"
    ):
        problems.append("accepted, but must be refused")
    wait_for_jobs(hostile)
    problems += staged_script_problems(case, hostile, root, "dispatch", markers)
    problems += tracebacks_in(root)
    return problems


class EmbeddedDispatcher:
    """The real Dispatcher class over the embedded queue, rebuilt whenever it dies.

    SQLite connections belong to the thread that opened them: the dispatcher (and its
    transport) lives on one worker thread, the test publishes through a transport of its own.
    """

    def __init__(self, hostile: HostileWorld, base: Path) -> None:
        from zbatch.clusters import cluster_for
        from zbatch.model.profiles import load_profile_file
        from zbatch.service.ledger import Ledger
        from zbatch.transport.embedded import EmbeddedTransport
        from zbatch.transport.factory import TransportConfig

        self.db = base / "queue.sqlite"
        self.profile = load_profile_file(hostile.profiles["dispatch"])
        self.transport = EmbeddedTransport(self.db)  # the test's side
        self.ledger = Ledger(base / "ledger.sqlite")
        self.cluster = cluster_for(self.profile)
        self.job_args = TransportConfig("embedded", str(self.db)).job_args()
        self.sentinel = sentinel_body(hostile, "hostile.submitted")
        self.rebuild()
        # The sentinel is submitted once; after each hostile message it comes again and must
        # be recognised as a duplicate: the whole path runs, no new job is needed.
        self.transport.publish("hostile.prime", self.sentinel, {"workflows-recipe": True})
        crash, _ = self.serve("hostile.prime", 1)
        assert crash is None and self.dispatcher.outcomes["submitted"] == 1, crash

    def rebuild(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from zbatch.prepare.job_files import JobContext
        from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
        from zbatch.transport.embedded import EmbeddedTransport

        self.worker = ThreadPoolExecutor(1, thread_name_prefix="hostile-dispatcher")
        self.dispatcher = Dispatcher(
            self.profile,
            self.cluster,
            self.ledger,
            EmbeddedTransport(self.db),
            JobContext(self.job_args),
            DispatcherConfig(backoff_s=0.01, track=False, workers=1, receive_timeout_s=0.2),
        )

    def serve(self, queue: str, count: int) -> tuple[str | None, bool]:
        """(crash, hung) after serving `count` messages of `queue`."""
        from concurrent.futures import TimeoutError as FutureTimeout

        self.dispatcher.config = replace(self.dispatcher.config, queue=queue)
        stop = threading.Event()
        future = self.worker.submit(self.dispatcher.serve, stop, count)
        try:
            future.result(timeout=60)
        except FutureTimeout:
            stop.set()
            self.worker.shutdown(wait=False)
            return None, True
        except BaseException as exc:  # noqa: BLE001 - any escape from serve() is the crash finding
            return f"{type(exc).__name__}: {str(exc)[:120]}", False
        return None, False


@pytest.fixture(scope="module")
def embedded(hostile: HostileWorld, tmp_path_factory: pytest.TempPathFactory) -> EmbeddedDispatcher:
    return EmbeddedDispatcher(hostile, tmp_path_factory.mktemp("embedded-dispatcher"))


@pytest.mark.parametrize("case", DISPATCH_CASES, ids=ids)
def test_dispatcher_embedded(
    case: Case, hostile: HostileWorld, embedded: EmbeddedDispatcher
) -> None:
    from zbatch.transport.base import REASON_HEADER

    root, markers = dispatch_markers(hostile, case, "hostile.submitted")
    before = outside_state(hostile, case)
    body, headers = dispatch_body(case, markers)
    queue = f"hostile.{case.slug}"
    transport = embedded.transport
    transport.publish(queue, body, headers)
    transport.publish(queue, embedded.sentinel, {"workflows-recipe": True})
    counts = Counter(embedded.dispatcher.outcomes)
    crash, hung = embedded.serve(queue, 2)
    delta = Counter(embedded.dispatcher.outcomes)
    delta.subtract(counts)
    problems: list[str] = []
    verdict = "broken"
    if crash:
        problems.append(f"dispatcher crashed ({crash.split(':')[0]})")
    if hung:
        problems.append("dispatcher hung")
    if crash or hung:
        embedded.rebuild()
    dead = []
    while (delivery := transport.receive(f"dlq.{queue}", 0)) is not None:
        dead.append(delivery)
        transport.ack(delivery)
    mine = [d for d in dead if d.body == body]
    if any(d.body == embedded.sentinel for d in dead):
        problems.append("the valid message after it was dead-lettered")
    elif not crash and not hung and delta["duplicate"] < 1:
        problems.append(f"the valid message after it was not processed ({dict(delta)})")
    if mine:
        verdict = "error"
        reason = str(mine[0].headers.get(REASON_HEADER, ""))
        problems += dead_letter_problems(reason)
    elif delta["submitted"] >= 1 or delta["duplicate"] >= 2:
        verdict = "accepted"
        problems += accepted_problems(case, hostile, root, markers, "dispatch")
    elif not crash and not hung:
        problems.append(f"message lost: neither processed nor dead-lettered ({dict(delta)})")
    if transport.depth(queue):
        problems.append("a message was left on the queue")
    problems += [f"canary created: {n}" for n in hostile.canaries_of(case)]
    problems += outside_problems(hostile, case, before)
    check(record(case.id, "dispatcher (embedded)", "hostile-dispatch", verdict, problems))


def dead_letter_problems(reason: str) -> list[str]:
    if not reason:
        return ["dead-lettered without a reason header"]
    if reason.startswith("internal error"):
        return [f"dead-lettered as an internal error: {reason[:120]}"]
    if "\n" in reason or len(reason) > 4000:
        return ["dead-letter reason is not one bounded line"]
    return []


class RabbitDispatcher:
    """`zbatch dispatcher --transport pika` as a real process, restarted when it dies."""

    def __init__(self, hostile: HostileWorld, base: Path) -> None:
        from zbatch.transport.admin import setup_broker
        from zbatch.transport.pika import PikaTransport

        tag = uuid.uuid4().hex[:8]
        self.work = f"zbatch-hostile.{tag}"
        self.submitted = f"zbatch-hostile.{tag}.submitted"
        self.queues = [
            self.work,
            self.submitted,
            f"{self.submitted}.failed",
            f"{self.submitted}.done",
        ]
        from zbatch.transport.rabbit_settings import RabbitSettings

        self.admin = PikaTransport(RabbitSettings(reconnect_s=10.0))
        self.admin.connect()
        setup_broker(self.admin, self.queues)
        self.hostile = hostile
        self.base = base
        self.log = base / "dispatcher.log"
        self.log_offset = 0
        self.proc: Any = None
        self.port = 0
        self.sentinel = sentinel_body(hostile, self.submitted)
        try:
            self.start()
            self.admin.publish(self.work, self.sentinel, {"workflows-recipe": True})
            primed = self.wait_for(lambda m: m.get("zbatch_steps_submitted_total", 0) >= 1, 60)
            assert primed, self.log.read_text(errors="replace")[-3000:]
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        import os
        import subprocess
        import sys

        from tests.hostile.corpus_checks import REPO

        env = {**os.environ, "ZBATCH_STATE_DIR": str(self.base / "state")}
        argv = [
            sys.executable, "-m", "zbatch", "-v", "dispatcher",
            "--profile", str(self.hostile.profiles["dispatch"]), "--transport", "pika",
            "--queue", self.work, "--workers", "1", "--metrics-port", "0",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(
                r"http://127\.0\.0\.1:(\d+)/",
                self.log.read_text(errors="replace")[self.log_offset :],
            )
            if found:
                self.port = int(found.group(1))
                break
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        self.wait_for(lambda m: m.get("zbatch_broker_connected", 0) == 1, 60)

    def metrics(self) -> dict[str, float]:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                key = name.split("{")[0]
                if "notice" in name:  # a notice the dispatcher could not send, not a message
                    key += ":notices"
                found[key] = found.get(key, 0.0) + float(value)
        return found

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, condition: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if condition(self.metrics()):
                return True
            time.sleep(0.05)
        return False

    def new_log(self) -> str:
        text = self.log.read_text(errors="replace")
        new, self.log_offset = text[self.log_offset :], len(text)
        return new

    def restart(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)
        self.admin.purge(self.work)
        self.start()

    def recover(self, timeout: float = 180) -> None:
        """After a broker outage: wait for it, empty the test's queues, restart afresh."""
        from zbatch.errors import TransportError

        deadline = time.monotonic() + timeout
        while True:
            try:
                for queue in self.queues:
                    self.admin.purge(queue)
                    self.admin.purge(f"dlq.{queue}")
                break
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)
        self.start()

    def drain(self, queue: str) -> list[Any]:
        found = []
        while (delivery := self.admin.get(queue)) is not None:
            found.append(delivery)
            self.admin.ack(delivery)
        return found

    def close(self) -> None:
        import contextlib
        import signal
        import subprocess

        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for queue in self.queues:
            for name in (queue, f"dlq.{queue}"):
                with contextlib.suppress(Exception):
                    self.admin.delete_queue(name)
        self.admin.disconnect()


@pytest.fixture(scope="module")
def rabbit(
    hostile: HostileWorld, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitDispatcher]:
    harness = RabbitDispatcher(hostile, tmp_path_factory.mktemp("rabbit-dispatcher"))
    yield harness
    harness.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("case", DISPATCH_CASES, ids=ids)
def test_dispatcher_rabbitmq(case: Case, hostile: HostileWorld, rabbit: RabbitDispatcher) -> None:
    """Other tests restart RabbitMQ now and then: a case the outage touched runs again."""
    for _attempt in range(3):
        outcome = rabbit_case(case, hostile, rabbit)
        if outcome is None:
            return  # AMQP cannot carry it
        verdict, problems, outage = outcome
        if not outage:
            break
        rabbit.recover()
    else:
        problems = [*problems, "RabbitMQ kept going away (restarted by another test?)"]
    check(record(case.id, "dispatcher (rabbitmq)", "hostile-dispatch", verdict, problems))


def rabbit_case(
    case: Case, hostile: HostileWorld, rabbit: RabbitDispatcher
) -> tuple[str, list[str], bool] | None:
    """(verdict, problems, whether a broker outage spoiled the attempt), or None."""
    from zbatch.errors import TransportError
    from zbatch.transport.base import REASON_HEADER

    root, markers = dispatch_markers(hostile, case, rabbit.submitted)
    before = outside_state(hostile, case)
    body, headers = dispatch_body(case, markers)
    rabbit.new_log()
    start = rabbit.metrics()
    try:
        rabbit.admin.publish(rabbit.work, body, headers)
        rabbit.admin.publish(rabbit.work, rabbit.sentinel, {"workflows-recipe": True})
    except UnicodeEncodeError:
        # AMQP carries header text as UTF-8: a lone surrogate cannot even be sent.
        check(record(case.id, "dispatcher (rabbitmq)", "hostile-dispatch", "error", []))
        return None
    except TransportError:
        return "broken", ["could not publish"], True

    def grew(metrics: dict[str, float], *names: str) -> float:
        return sum(metrics.get(n, 0) - start.get(n, 0) for n in names)

    settled = [
        "zbatch_steps_submitted_total",
        "zbatch_steps_duplicate_total",
        "zbatch_messages_dead_lettered_total",
    ]
    done = rabbit.wait_for(
        lambda m: grew(m, "zbatch_messages_received_total") >= 2 and grew(m, *settled) >= 2,
        RABBIT_WAIT,
    )
    end = rabbit.metrics()
    log = rabbit.new_log()
    if "broker unavailable" in log or "reconnecting to RabbitMQ" in log:
        return "broken", ["broker outage"], True
    problems: list[str] = []
    verdict = "broken"
    if not rabbit.alive():
        last = [ln for ln in log.splitlines() if ln and not ln.startswith(" ")]
        problems.append(f"dispatcher died ({last[-1].split(':')[0][:60] if last else '?'})")
        rabbit.restart()
    elif not done:
        # Stuck (say, a message it never settles holds the one prefetch slot): start afresh.
        problems.append(f"the valid message after it was not processed within {RABBIT_WAIT} s")
        rabbit.restart()
    elif grew(end, "zbatch_steps_duplicate_total") < 1:
        problems.append("the valid message after it was not processed")
    if "Traceback (most recent call last)" in log and not problems:
        problems.append("traceback in the dispatcher's log")
    try:
        dead = rabbit.drain(f"dlq.{rabbit.work}")
    except TransportError:
        return "broken", ["could not read the DLQ"], True
    mine = [d for d in dead if d.body == body]
    if any(d.body == rabbit.sentinel for d in dead):
        problems.append("the valid message after it was dead-lettered")
    if mine:
        verdict = "error"
        problems += dead_letter_problems(str(mine[0].headers.get(REASON_HEADER, "")))
    elif (
        grew(end, "zbatch_steps_submitted_total") or grew(end, "zbatch_steps_duplicate_total") >= 2
    ):
        verdict = "accepted"
        problems += accepted_problems(case, hostile, root, markers, "dispatch")
    elif rabbit.alive() and done:
        problems.append("message lost: neither processed nor dead-lettered")
    rabbit.drain(rabbit.submitted)
    problems += [f"canary created: {n}" for n in hostile.canaries_of(case)]
    problems += outside_problems(hostile, case, before)
    return verdict, problems, False
