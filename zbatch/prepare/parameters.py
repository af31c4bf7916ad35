"""Turn a recipe wrapper step into a JobSpec: parameter names from python-dlstbx, checked.

Step values override the profile's defaults; the profile's limits are hard: exceeding them is
an error, never a silent clamp. Every value is validated here, before any template sees it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zbatch.errors import ParameterError
from zbatch.model import safety
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.message import StepMessage
from zbatch.model.profiles import Profile
from zbatch.model.units import parse_duration, parse_memory_mb
from zbatch.prepare.qsub_args import translate_qsub_args
from zbatch.prepare.shell_syntax import check_commands

log = logging.getLogger(__name__)

# A path as the host that runs the job resolves it (symbolic links followed).
Resolve = Callable[[str], str]
# Told the name of each unknown `parameters.cluster` key a step carries, where the profile
# ignores them (`unknown_cluster_keys: warn`): the dispatcher counts them in its metrics.
UnknownKeyCounter = Callable[[str], None]

CLUSTER_KEYS = (
    "scheduler",
    "partition",
    "job_name",
    "environment",
    "cpus_per_task",
    "tasks",
    "nodes",
    "memory_per_node",
    "min_memory_per_cpu",
    "time_limit",
    "gpus",
    "gpus_per_node",
    "exclusive",
    "account",
    "constraints",
    "prefer",
    "qos",
    "array",
    "commands",
    "qsub_submission_parameters",
)


# Lines a scheduler reads as directives wherever they stand (SGE's `#$`), or before the body.
DIRECTIVE_LINE = re.compile(r"\s*#\s*(\$|SBATCH|PBS|BSUB|zbatch-local:)", re.IGNORECASE)


def is_wrapper_step(step: dict[str, Any]) -> bool:
    params = step.get("parameters")
    if not isinstance(params, dict):
        return False
    return any(k in params for k in ("wrapper", "cluster", "cluster_commands", "commands"))


# How a key name is shown: plain when it is a short identifier, else escaped and shortened
# (a key may hold line breaks, escapes or a megabyte of text).
SHOWN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_SHOWN_KEY = 80


def shown_key(key: str) -> str:
    if SHOWN_KEY.fullmatch(key):
        return key
    text = repr(key)
    return text if len(text) <= MAX_SHOWN_KEY else text[: MAX_SHOWN_KEY - 3] + "..."


class _UnknownKeyLog:
    """Unknown cluster keys already warned about in this process: each is logged once (the
    first few hundred; then one line says that further ones go unlogged)."""

    LIMIT = 256

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._full = False
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self.LIMIT:
                if not self._full:
                    self._full = True
                    log.warning(
                        "%d distinct unknown parameters.cluster keys warned about; further "
                        "ones are ignored without a warning (see the dispatcher's metric "
                        "zbatch_unknown_cluster_keys_total)",
                        self.LIMIT,
                    )
                return False
            self._seen.add(key)
            return True

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._full = False


UNKNOWN_KEYS_LOGGED = _UnknownKeyLog()


def report_unknown_keys(reader: StepReader, count: UnknownKeyCounter | None) -> None:
    """A profile that ignores unknown cluster keys: warn once per key, count every one."""
    for key in reader.unknown_keys:
        if UNKNOWN_KEYS_LOGGED.first_time(key):
            log.warning(
                "%s of recipe %s: ignoring unknown key parameters.cluster.%s (profile %s has "
                "unknown_cluster_keys: warn; logged once per key)",
                reader.where,
                safety.safe_tag(reader.message.recipe_id, 36),
                shown_key(key),
                shown_key(reader.profile.name),
            )
        if count is not None:
            count(key)


def _int(value: object, what: str, minimum: int = 1) -> int:
    return safety.parse_int(value, what, minimum)


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "1", 1):
        return True
    if value in ("false", "False", "0", 0, "", None):
        return False
    raise ParameterError(f"{what} {value!r} must be true or false")


def _limit(value: int | None, maximum: int | None, what: str, profile: Profile) -> None:
    if value is not None and maximum is not None and value > maximum:
        raise ParameterError(
            f"{what} {value} is beyond profile {profile.name!r}'s limit of {maximum}"
        )


class StepReader:
    """Reads one step's parameters against a profile; one instance per step."""

    def __init__(
        self, message: StepMessage, profile: Profile, resolve: Resolve | None = os.path.realpath
    ) -> None:
        self.message = message
        self.profile = profile
        self.resolve = resolve  # real paths where the job runs; None: text checks only
        self.where = f"step {message.pointer}"
        params = message.step.get("parameters", {})
        if not isinstance(params, dict):
            raise ParameterError(f"{self.where}: parameters must be an object")
        self.params: dict[str, Any] = params
        cluster = params.get("cluster", {})
        # Legacy SGE recipes name a cluster with a string; its settings live in cluster_* keys.
        given: dict[Any, Any] = cluster if isinstance(cluster, dict) else {}
        # Keys of a message are text from anyone: sorted by their repr (never compared as
        # different types), and shown escaped wherever they are named.
        self.unknown_keys: list[str] = sorted(
            (str(key) for key in given if key not in CLUSTER_KEYS), key=repr
        )
        if self.unknown_keys and profile.unknown_cluster_keys == "refuse":
            raise ParameterError(
                f"{self.where}: unknown key parameters.cluster.{shown_key(self.unknown_keys[0])}"
                f"; allowed: {', '.join(CLUSTER_KEYS)} (a profile may ignore unknown keys "
                "with unknown_cluster_keys: warn)"
            )
        # Only the keys zbatch knows are ever read: an ignored key reaches no job script.
        self.cluster: dict[str, Any] = {k: v for k, v in given.items() if k in CLUSTER_KEYS}

    def opt(self, key: str) -> Any:
        return self.cluster.get(key)

    def workdir_given(self) -> object:
        """`parameters.workingdir`, or the default below the root, not yet checked."""
        given = self.params.get("workingdir")
        if given is None:
            root = self.profile.workdir_root or str(Path.home() / "zbatch-runs")
            tag = safety.safe_tag(self.message.recipe_id, 36)
            given = f"{os.path.expanduser(root)}/{tag}/step-{self.message.pointer}"
        return given

    def workdir(self) -> str:
        """The job's folder: inside the profile's root as written and once resolved (on the
        job's host), so neither `..` nor a symbolic link inside the root leads out of it."""
        what = f"{self.where}: parameters.workingdir"
        path = safety.check_path(self.workdir_given(), what)
        return safety.check_within(path, confinement_root(self.profile), what, self.resolve)

    def environment(self) -> dict[str, str]:
        """The profile's variables, then the step's: each name a shell identifier that does
        not steer loaders or interpreters (unless the profile allows it by name), each value
        one line of text (a line break would let a value start a command or a `#$` directive).
        """
        env = dict(self.profile.environment)
        given = self.opt("environment")
        given = {} if given is None else given
        what = f"{self.where}: parameters.cluster.environment"
        if not isinstance(given, dict):
            raise ParameterError(f"{what} must be an object of NAME: value")
        allowed = self.profile.allowed_environment
        for key, value in given.items():
            name = safety.check_env_name(key, f"{self.where}: environment variable name", allowed)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ParameterError(
                    f"{what}: {name} must be text or a number, not {type(value).__name__}"
                )
            if isinstance(value, int) and value.bit_length() > 256:
                raise ParameterError(f"{what}: {name} is a number too large for a variable")
            env[name] = safety.check_text(str(value), f"{self.where}: environment {name}")
        return env

    def partition(self) -> str | None:
        queue = self.params.get("cluster_queue")
        if queue is not None:
            safety.check(safety.NAME, queue, f"{self.where}: cluster_queue")
            mapping = self.profile.queue_mapping
            if queue not in mapping:
                known = ", ".join(sorted(mapping)) or "none configured"
                raise ParameterError(
                    f"{self.where}: cluster_queue {queue!r} is not mapped by profile "
                    f"{self.profile.name!r}; known queues: {known}"
                )
            return mapping[queue]
        value = self.opt("partition") or self.profile.defaults.partition
        return (
            None if value is None else safety.check(safety.NAME, value, f"{self.where}: partition")
        )

    def named(self, key: str, default: str | None, pattern: Any = safety.NAME) -> str | None:
        value = self.opt(key)
        if value is None:
            return default
        return safety.check(pattern, value, f"{self.where}: parameters.cluster.{key}")

    def legacy_overrides(self) -> dict[str, Any]:
        """Raw qsub arguments, from dlstbx's SGE-era `cluster_submission_parameters` or the
        `cluster.qsub_submission_parameters` some recipes still carry (one of them only)."""
        given = {
            key: value
            for key, value in (
                ("cluster_submission_parameters", self.params.get("cluster_submission_parameters")),
                ("cluster.qsub_submission_parameters", self.opt("qsub_submission_parameters")),
            )
            if value is not None
        }
        if not given:
            return {}
        if len(given) > 1:
            raise ParameterError(
                f"{self.where}: both cluster_submission_parameters and "
                "cluster.qsub_submission_parameters are set; give the qsub arguments once"
            )
        ((key, raw),) = given.items()
        text = safety.check_text(raw, f"{self.where}: {key}", limit=safety.MAX_LINE)
        try:
            tokens = shlex.split(text)
        except ValueError as exc:
            raise ParameterError(f"{self.where}: {key}: {exc}") from None
        return translate_qsub_args(tokens, self.profile, self.where, key)


def _resources(reader: StepReader, legacy: dict[str, Any]) -> dict[str, Any]:
    profile, where, opt = reader.profile, reader.where, reader.opt
    defaults = profile.defaults
    cpus = legacy.get("cpus") or _int(
        opt("cpus_per_task") or defaults.cpus, f"{where}: cpus_per_task"
    )
    memory = opt("memory_per_node")
    memory_mb = legacy.get("memory_mb") or (
        parse_memory_mb(memory, f"{where}: memory_per_node") if memory else defaults.memory
    )
    per_cpu = opt("min_memory_per_cpu")
    per_cpu_mb = legacy.get("memory_per_cpu_mb") or (
        parse_memory_mb(per_cpu, f"{where}: min_memory_per_cpu") if per_cpu else None
    )
    limit = opt("time_limit")
    time_s = legacy.get("time_limit_s") or (
        parse_duration(limit, f"{where}: time_limit") if limit else defaults.time_limit
    )
    if (time_s is not None and time_s < 1) or (limit is not None and not limit):
        # 0 would drop the time directive altogether, and with it the profile's limit.
        raise ParameterError(f"{where}: time_limit {limit!r} must be at least one second")
    gpus = _int(opt("gpus"), f"{where}: gpus", 0) if opt("gpus") is not None else defaults.gpus
    gpus = legacy.get("gpus", gpus)
    limits = profile.limits
    _limit(cpus, limits.max_cpus, f"{where}: cpus", profile)
    _limit(memory_mb, limits.max_memory, f"{where}: memory (MB)", profile)
    if per_cpu_mb is not None:
        _limit(per_cpu_mb * cpus, limits.max_memory, f"{where}: memory (MB)", profile)
    _limit(time_s, limits.max_time_limit, f"{where}: time limit (s)", profile)
    _limit(gpus, limits.max_gpus, f"{where}: gpus", profile)
    return {
        "cpus": cpus,
        "memory_mb": memory_mb,
        "memory_per_cpu_mb": per_cpu_mb,
        "time_limit_s": time_s,
        "gpus": gpus,
    }


def read_step(
    message: StepMessage,
    profile: Profile,
    resolve: Resolve | None = os.path.realpath,
    count_unknown: UnknownKeyCounter | None = None,
) -> JobSpec:
    """The JobSpec of a step, without its command (which needs the spec's paths); `resolve`
    gives real paths on the host where the job runs (None: text checks only); unknown cluster
    keys a profile ignores are logged and told to `count_unknown`."""
    reader = StepReader(message, profile, resolve)
    report_unknown_keys(reader, count_unknown)
    where, opt = reader.where, reader.opt
    legacy = reader.legacy_overrides()
    project = message.step["parameters"].get("cluster_project")
    account: str | None = legacy.get("account") or reader.named("account", profile.defaults.account)
    if project is not None and "{" not in str(project):  # dlstbx ignores unfilled placeholders
        account = safety.check(safety.NAME, project, f"{where}: cluster_project")
    default_name = f"zbatch-step{message.pointer}"
    return JobSpec(
        name=legacy.get("name") or reader.named("job_name", default_name) or default_name,
        workdir=reader.workdir(),
        command="",
        partition=reader.partition(),
        account=account,
        qos=reader.named("qos", profile.defaults.qos),
        tasks=_int(opt("tasks"), f"{where}: tasks") if opt("tasks") is not None else None,
        nodes=_int(opt("nodes"), f"{where}: nodes") if opt("nodes") is not None else None,
        gpus_per_node=(
            _int(opt("gpus_per_node"), f"{where}: gpus_per_node", 0)
            if opt("gpus_per_node") is not None
            else None
        ),
        exclusive=_bool(opt("exclusive"), f"{where}: exclusive") or legacy.get("exclusive", False),
        constraints=reader.named("constraints", None, safety.CONSTRAINT),
        prefer=reader.named("prefer", None, safety.CONSTRAINT),
        array=reader.named("array", None, safety.ARRAY),
        environment=reader.environment(),
        extra_directives=list(profile.extra_directives) + legacy.get("raw", []),
        **_resources(reader, legacy),
    )


def step_commands(message: StepMessage, profile: Profile) -> list[str] | None:
    """The recipe's own shell commands, where the step has them and the profile allows them."""
    params = message.step.get("parameters", {})
    cluster = params.get("cluster") if isinstance(params.get("cluster"), dict) else {}
    commands = cluster.get("commands", params.get("cluster_commands", params.get("commands")))
    if commands is None:
        return None
    where = f"step {message.pointer}"
    if not profile.allow_commands:
        raise ParameterError(
            f"{where}: carries shell commands, but profile {profile.name!r} only runs named "
            "wrappers (set allow_commands: true in the profile to permit recipe commands)"
        )
    lines = [commands] if isinstance(commands, str) else commands
    if not isinstance(lines, list) or not all(isinstance(c, str) for c in lines):
        raise ParameterError(f"{where}: commands must be a string or a list of strings")
    checked = []
    for index, line in enumerate(lines):
        what = f"{where}: commands[{index}]"
        for part in safety.check_text(line, what, multiline=True).split("\n"):
            if DIRECTIVE_LINE.match(part):
                raise ParameterError(
                    f"{what}: the line {part[:60]!r} would be read as a scheduler directive "
                    "(SGE reads '#$' lines anywhere in a script); limits come from the profile"
                )
        checked.append(line)
    check_commands("\n".join(checked), f"{where}: commands")
    return checked


ENVELOPE_KEYS = ("recipewrapper", "recipefile", "recipeenvironment")
# Folders a wrapper is told in job_parameters (relative ones are below the job's folder).
WRAPPER_DIRECTORY_KEYS = ("working_directory", "results_directory")


def confinement_root(profile: Profile) -> str | None:
    """The folder every path of a step must lie in (its real path too), or None."""
    root = profile.workdir_root
    return os.path.normpath(os.path.expanduser(root)) if root else None


def names_recipewrapper(wrapper: object) -> bool:
    """cryoem-services' dialect: `parameters.wrapper` holding the recipe-wrapper file's path
    (`"{class2d_dir}/.recipewrap"`), where zbatch's own recipes name a wrapper. A wrapper's
    name never contains "/", so a value with one is a path."""
    return isinstance(wrapper, str) and "/" in wrapper


def wrapper_name(params: dict[str, Any]) -> object:
    """`parameters.wrapper` when it names a wrapper (not a recipe-wrapper file), else None."""
    wrapper = params.get("wrapper")
    return None if names_recipewrapper(wrapper) else wrapper


def envelope_given(params: dict[str, Any], where: str) -> dict[str, tuple[str, str]]:
    """The envelope paths a step names, text-checked (absolute, normalised, no `..`, no line
    break or shell syntax), each with what to call it in an error. A recipe-wrapper location
    in `parameters.wrapper` counts as `recipewrapper`; both given, they must agree."""
    given: dict[str, tuple[str, str]] = {}
    for key in ENVELOPE_KEYS:
        if params.get(key):
            what = f"{where}: parameters.{key}"
            given[key] = (safety.check_path(params[key], what), what)
    location = params.get("wrapper")
    if names_recipewrapper(location):
        what = f"{where}: parameters.wrapper (a recipe-wrapper file, as it holds '/')"
        if isinstance(location, str) and not location.startswith("/"):
            raise ParameterError(
                f"{what} {safety.check_text(location, what, limit=4096)!r} is a relative "
                "path; give the absolute path of the recipe-wrapper file (a wrapper's name "
                "never contains '/')"
            )
        path = safety.check_path(location, what)
        if "recipewrapper" in given and given["recipewrapper"][0] != path:
            raise ParameterError(
                f"{where}: parameters.wrapper {path!r} and parameters.recipewrapper "
                f"{given['recipewrapper'][0]!r} name different recipe-wrapper files; "
                "give the path once"
            )
        given["recipewrapper"] = (path, what)
    return given


def envelope_files(
    message: StepMessage,
    paths: JobPaths,
    root: str | None = None,
    resolve: Resolve | None = os.path.realpath,
) -> tuple[Path, dict[Path, str]]:
    """The recipewrapper file (and optional recipe/environment files) a step's job reads.

    A path the step names must lie inside `root` (when given), as written and once resolved
    by `resolve` on the job's host: the files are written there before the job starts.
    """
    params = message.step.get("parameters", {})
    named: dict[str, Path] = {}
    for key, (value, what) in envelope_given(params, f"step {message.pointer}").items():
        named[key] = Path(safety.check_within(value, root, what, resolve))
    recipewrapper = named.get("recipewrapper", paths.recipewrapper)
    files = {recipewrapper: json.dumps(message.to_body(), indent=2)}
    if "recipefile" in named:
        files[named["recipefile"]] = json.dumps(message.recipe.to_json(), indent=2)
    if "recipeenvironment" in named:
        files[named["recipeenvironment"]] = json.dumps(message.environment, indent=2)
    return recipewrapper, files


def wrapper_directory(given: object, workdir: str, what: str) -> str | None:
    """A folder from job_parameters as the job will use it (relative ones are below the job's
    folder), checked as a path; None when not given."""
    if given is None or given == "":
        return None
    if not isinstance(given, str):
        raise ParameterError(f"{what} must be a path, not {type(given).__name__}")
    return safety.check_path(given if given.startswith("/") else f"{workdir}/{given}", what)


def named_paths(message: StepMessage, profile: Profile) -> list[str]:
    """Every path the step names that passes the text checks (the job's folder, its envelope
    files, the wrapper's folders), so that they can all be resolved in one batch."""
    found: list[str] = []

    def add(value: object, relative_to: str | None = None) -> str | None:
        try:
            path = (
                safety.check_path(value, "path")
                if relative_to is None
                else wrapper_directory(value, relative_to, "path")
            )
        except ParameterError:
            return None  # refused with its own message when checked for real
        if path is not None:
            found.append(path)
        return path

    try:
        reader = StepReader(message, profile, None)
    except ParameterError:
        return found
    workdir = add(reader.workdir_given())
    for key in ENVELOPE_KEYS:
        if reader.params.get(key):
            add(reader.params[key])
    if names_recipewrapper(reader.params.get("wrapper")):
        add(reader.params["wrapper"])
    job = message.step.get("job_parameters")
    if workdir is not None and isinstance(job, dict):
        for key in WRAPPER_DIRECTORY_KEYS:
            add(job.get(key), workdir)
    return found
