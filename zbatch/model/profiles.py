"""Site profiles: which cluster a step goes to, how to reach it, and what it may ask for.

A profile is a YAML file validated by pydantic with unknown keys forbidden, so a typo is an
error that names the file, the key and what would be valid, never a silently ignored setting.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Hashable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from zbatch.errors import ParameterError, ProfileError, ZbatchError
from zbatch.model import safety
from zbatch.model.units import format_clock, parse_duration, parse_memory_mb

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


def _checked(parse: Callable[[object], int], value: object) -> int:
    """Run a unit parser inside a validator: pydantic reports ValueErrors with the key."""
    try:
        return parse(value)
    except ParameterError as exc:
        raise ValueError(str(exc)) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectionConfig(_Strict):
    type: Literal["local", "ssh", "drmaa"] = "local"
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    accept_unknown_hosts: bool = False
    keepalive_s: int = Field(default=30, ge=0)
    connect_timeout_s: float = Field(default=10, gt=0)
    command_timeout_s: float = Field(default=60, gt=0)
    remote_shell: str = "bash"
    # The host runs this machine's zbatch at the same path (a shared software file system, or
    # this machine itself): jobs then call back the dispatcher's own interpreter, and the
    # profile needs no zbatch_command.
    shares_installation: bool = False
    # SSH connections opened at most, each with its own remote shell, for concurrent commands:
    # as many as the dispatcher's default --workers, so no submission waits for a shell.
    pool_size: int = Field(default=8, ge=1, le=64)


class DrmaaConfig(_Strict):
    """SGE's settings for libdrmaa (connection.type drmaa), exported by zbatch itself before it
    loads the library; unset ones come from the environment."""

    sge_root: str | None = None  # SGE_ROOT
    sge_cell: Name | None = None  # SGE_CELL (SGE's own default: "default")
    library_path: str | None = None  # DRMAA_LIBRARY_PATH: the path of libdrmaa.so

    @field_validator("sge_root", "library_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None:
            _valid(safety.check_text, value, "the path", limit=4096)
            if not os.path.isabs(value):
                raise ValueError(f"{value!r} must be an absolute path")
        return value


class Defaults(_Strict):
    partition: Name | None = None
    account: Name | None = None
    qos: Name | None = None
    cpus: int = Field(default=1, ge=1)
    # Megabytes once read; written as 512, "16G" or "512M".
    memory: int | None = Field(default=None, ge=1)
    # Seconds once read; written as 1800 or "2:00:00".
    time_limit: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0)

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else _checked(parse_duration, value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return None if value is None else _checked(parse_memory_mb, value)


class Limits(_Strict):
    max_cpus: int | None = Field(default=None, ge=1)
    max_memory: int | None = Field(default=None, ge=1)  # megabytes, as defaults.memory
    max_time_limit: int | None = Field(default=None, ge=1)  # seconds, as defaults.time_limit
    max_gpus: int | None = Field(default=None, ge=0)
    # Step messages the dispatcher accepts (zbatch.model.safejson's defaults: 8 MiB, 64 levels).
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_json_depth: int = Field(default=64, ge=8, le=128)

    @field_validator("max_time_limit", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else _checked(parse_duration, value)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return None if value is None else _checked(parse_memory_mb, value)


class Resources(_Strict):
    """The site's own names for resources, so no site needs a code fork."""

    slurm_memory: Literal["mem", "mem-per-cpu"] = "mem"
    sge_memory: Literal["h_vmem", "m_mem_free", "mem_free"] | None = "h_vmem"
    sge_parallel_environment: Name = "smp"
    sge_gpu_resource: Name = "gpu"
    # The boolean complex an exclusive job asks for (`-l <name>=true`); sites name it
    # differently (`excl`, `exclusive`).
    sge_exclusive: Name = "exclusive"


class LocalConfig(_Strict):
    slots: int = Field(default=2, ge=1, le=1024)
    state_dir: str | None = None


class Profile(_Strict):
    name: Name
    description: str = ""
    scheduler: Literal["local", "slurm", "sge"]
    connection: ConnectionConfig = ConnectionConfig()
    drmaa: DrmaaConfig = DrmaaConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    resources: Resources = Resources()
    local: LocalConfig = LocalConfig()
    extra_directives: list[str] = []
    setup: list[str] = []
    # Variables a message may set although they steer programs (safety.DENIED_ENV); declared
    # before `environment`, whose own names are checked against it.
    allowed_environment: list[str] = []
    environment: dict[str, str] = {}
    workdir_root: str | None = None
    template_dir: str | None = None
    allow_commands: bool = False
    allow_raw_scheduler_args: bool = False
    # A step's `parameters.cluster` key zbatch does not know: refuse the step (dead-letter it),
    # or warn (log it once per key, count it) and submit without it, as dlstbx ignores them.
    unknown_cluster_keys: Literal["refuse", "warn"] = "refuse"
    # The wrappers a step may name; None: every installed one.
    wrappers: list[Name] | None = None
    # A `[rabbit]` (or `[stomp]`) INI on the host where jobs run, given to `zbatch wrap
    # --rabbit-conf` (`--stomp-conf`): jobs reach the broker through this reference, never
    # through the dispatcher's credentials.
    job_broker_config: str | None = None
    queue_mapping: dict[str, Name] = {}
    zbatch_command: list[str] | None = None
    poll_interval_s: float = Field(default=2.0, gt=0)
    # How long a step may wait for an unreachable cluster (controller restart, SSH refused)
    # before it is dead-lettered. Below RabbitMQ's default consumer_timeout (30 min), which
    # would otherwise take the held message back first.
    outage_budget_s: int = Field(default=1500, ge=0)
    source: str = Field(default="", exclude=True)

    @field_validator("outage_budget_s", mode="before")
    @classmethod
    def _budget(cls, value: object) -> object:
        return _checked(lambda v: parse_duration(v, "an outage budget"), value)

    @field_validator("extra_directives", "setup")
    @classmethod
    def _single_lines(cls, value: list[str]) -> list[str]:
        for line in value:
            if "\n" in line or "\r" in line or "\0" in line:
                raise ValueError(f"{line!r} spans several lines; give one line per entry")
        return value

    @field_validator("allowed_environment")
    @classmethod
    def _identifiers(cls, value: list[str]) -> list[str]:
        for name in value:
            _valid(safety.check, safety.ENV_KEY, name, "variable name")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        allowed = info.data.get("allowed_environment", [])
        for name, text in value.items():
            _valid(safety.check_env_name, name, "variable name", allowed)
            _valid(safety.check_text, text, f"the value of {name}")
        return value

    @field_validator("workdir_root", "template_dir", "job_broker_config")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _valid(safety.check_text, value, "the path", limit=4096)
        if not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"{value!r} must be an absolute path")
        if value.startswith("//") or posixpath.normpath(value) != value:
            raise ValueError(
                f"{value!r} is not a normalised path (no '..', '.', '//' or trailing '/'); "
                f"write {posixpath.normpath(value).replace('//', '/')!r}"
            )
        return value

    @field_validator("template_dir")
    @classmethod
    def _private_templates(cls, value: str | None) -> str | None:
        problem = None if value is None else _writable_by_others(Path(value).expanduser())
        if problem:
            raise ValueError(f"{problem}, so any user could change the job scripts: fix its mode")
        return value

    @model_validator(mode="after")
    def _workable_connection(self) -> Profile:
        """Refuse connections that could only fail (or pick another scheduler) at submit time."""
        connection = self.connection
        if connection.type == "drmaa" and self.scheduler != "sge":
            # DrmaaCluster drives SGE's libdrmaa: any other scheduler would silently be SGE.
            raise _setting_error(
                "connection.type",
                f"drmaa reaches SGE only (SGE's libdrmaa), not {self.scheduler}: "
                "set scheduler: sge, or connection.type: local or ssh",
            )
        if connection.type != "drmaa" and self.drmaa != DrmaaConfig():
            raise _setting_error(
                "drmaa",
                f"only read by connection.type drmaa, not {connection.type}: remove it, or "
                "set connection.type: drmaa",
            )
        if connection.type != "ssh":
            return self
        if not connection.host:
            raise _setting_error(
                "connection.host",
                "missing: connection.type ssh needs the login node to reach; "
                "add connection.host: <its name>",
            )
        if not self.zbatch_command and not connection.shares_installation:
            # Jobs call zbatch back (`zbatch wrap`); without this they would be given this
            # machine's interpreter path, which means nothing on another host.
            host = connection.host if connection.host.isprintable() else repr(connection.host)
            raise _setting_error(
                "zbatch_command",
                f"missing: jobs on {host} run zbatch there, not this machine's; "
                f"add zbatch_command: [<path of zbatch on {host}>], or "
                "connection.shares_installation: true if it runs this installation",
            )
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Profile:
        """A default above its limit would make every step that relies on it fail, each
        blaming the step: refuse the profile instead."""
        defaults, limits = self.defaults, self.limits
        pairs: list[tuple[str, int | None, int | None, Callable[[int], str]]] = [
            ("cpus", defaults.cpus, limits.max_cpus, str),
            ("memory", defaults.memory, limits.max_memory, lambda mb: f"{mb} MB"),
            ("time_limit", defaults.time_limit, limits.max_time_limit, format_clock),
            ("gpus", defaults.gpus, limits.max_gpus, str),
        ]
        for key, value, limit, shown in pairs:
            if value is not None and limit is not None and value > limit:
                raise _setting_error(
                    f"defaults.{key}",
                    f"{shown(value)} is above limits.max_{key} ({shown(limit)}), so every step "
                    f"left to the default would be refused: lower defaults.{key} or raise "
                    f"limits.max_{key}",
                )
        return self


def _setting_error(key: str, message: str) -> PydanticCustomError:
    """An error about a combination of settings, reported under `key` (see _format_error)."""
    return PydanticCustomError("profile_setting", "{message}", {"key": key, "message": message})


def _valid(check: Callable[..., str], *args: Any, **kwargs: Any) -> None:
    """Run a safety check inside a validator: pydantic reports ValueErrors with the key."""
    try:
        check(*args, **kwargs)
    except ParameterError as exc:
        raise ValueError(str(exc)) from None


def _writable_by_others(folder: Path) -> str | None:
    """Why users other than the owner could change the templates in `folder`, or None.

    The folder and its templates must not be world-writable; a folder above it must not be
    either, unless it has the sticky bit (as /tmp does), which stops others renaming it. The
    chain is followed as written and once symbolic links are resolved. A folder that does not
    exist is reported when a template is rendered.
    """
    real = Path(os.path.realpath(folder))
    try:
        if not folder.is_dir():
            return None
        inside = [folder, *sorted(folder.glob("*.j2"))]
        above = [*folder.parents, *(real.parents if real != folder else [])]
        for path in inside:
            if path.stat().st_mode & stat.S_IWOTH:
                return f"{path} is writable by every user"
        for path in above:
            mode = path.stat().st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                return (
                    f"{path}, a folder above {folder}, is writable by every user "
                    "without the sticky bit"
                )
    except OSError as exc:
        return f"cannot inspect {folder}: {exc.strerror}"
    return None


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    # A key from the file may hold anything, a line break included: show odd ones quoted.
    key = ".".join(
        str(part) if safety.NAME.fullmatch(str(part)) else repr(part) for part in first["loc"]
    )
    if first["type"] == "profile_setting":  # a combination, named by the key to change
        key = str(first.get("ctx", {}).get("key", key))
    key = key or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        model: type[BaseModel] = Profile
        for part in first["loc"][:-1]:
            annotation = model.model_fields[str(part)].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        allowed = ", ".join(k for k in model.model_fields if k != "source")
        message = f"unknown key; allowed here: {allowed}"
    return f"{source}: {key}: {message}"


# Keys renamed because their old names misled (`memory_mb: 16G`): refused, never read as the
# new ones, so a profile says one thing in one spelling.
RENAMED = {
    "defaults": {"memory_mb": "memory", "time_limit_s": "time_limit"},
    "limits": {"max_memory_mb": "max_memory", "max_time_limit_s": "max_time_limit"},
}


def _refuse_renamed(data: dict[Any, Any], source: str) -> None:
    for section, renames in RENAMED.items():
        given = data.get(section)
        if not isinstance(given, dict):
            continue
        for old, new in renames.items():
            if old in given:
                raise ProfileError(
                    f"{source}: {section}.{old}: renamed; write {section}.{new} instead, "
                    "with the same value"
                )


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping of keys to values")
    _refuse_renamed(data, source)
    try:
        return Profile.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ProfileError(_format_error(source, exc)) from None


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    Plain YAML keeps the last value, so a second `allow_commands: true` further down a file
    would silently win over the first. Keys brought in by a merge (`<<: *defaults`) may still
    be overridden: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise DuplicateKeyError(
                        problem=f"duplicate key {key!r}: each key may be given once",
                        problem_mark=key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


# A profile is a page of settings: far below either limit; both keep hostile files cheap.
MAX_PROFILE_BYTES = 1024 * 1024
MAX_PROFILE_DEPTH = 32
MAX_PROFILE_NODES = 100_000


def _depth(data: object) -> int:
    """How deeply lists and mappings nest in `data`, counted without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_PROFILE_DEPTH:
                values = item.values() if isinstance(item, dict) else item
                stack.extend((value, level + 1) for value in values)
    return deepest


def _load_yaml(text: str, path: str) -> Any:
    """Parse with the strict loader, refusing documents that aliases blow up (a few lines of
    `&a [*b, *b, ...]` expand to billions of nodes) before anything is built from them."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded, stack = 0, [node]
        while stack:
            current = stack.pop()
            expanded += 1
            if expanded > MAX_PROFILE_NODES:
                raise ProfileError(
                    f"{path}: expands to more than {MAX_PROFILE_NODES} values (aliases); "
                    "not a profile"
                )
            if isinstance(current, yaml.MappingNode):
                stack.extend(part for pair in current.value for part in pair)
            elif isinstance(current, yaml.SequenceNode):
                stack.extend(current.value)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        mark = exc.problem_mark
        return (
            f"{path}: not valid YAML: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        )
    return f"{path}: not valid YAML: {str(exc).splitlines()[0]}"


def _profile_text(path: str | Path) -> str:
    """A profile file's text, read no further than MAX_PROFILE_BYTES (plus one to notice)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes; not a profile")
    return text


def load_profile_file(path: str | Path) -> Profile:
    text = _profile_text(path)
    try:
        data: Any = _load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ProfileError(_yaml_error(path, exc)) from None
    except RecursionError:
        raise ProfileError(
            f"{path}: nested too deeply to read; a profile nests at most {MAX_PROFILE_DEPTH} levels"
        ) from None
    if _depth(data) > MAX_PROFILE_DEPTH:
        raise ProfileError(
            f"{path}: nested more than {MAX_PROFILE_DEPTH} levels deep; not a profile"
        )
    return parse_profile(data, str(path))


def profile_warnings(profile: Profile) -> list[str]:
    """Settings that are valid but weaken a site's defences: `profiles check` prints them."""
    where = profile.source or profile.name
    warnings = []
    if profile.connection.accept_unknown_hosts:
        warnings.append(
            f"{where}: connection.accept_unknown_hosts is true: an unknown host key is trusted, "
            "so an impostor of the login node would receive the jobs; give known_hosts instead"
        )
    steering = [n for n in profile.allowed_environment if safety.env_name_denied(n)]
    if steering:
        warnings.append(
            f"{where}: allowed_environment lets messages set {', '.join(steering)}, which "
            "changes which programs jobs run or what they load"
        )
    return warnings


def search_path() -> list[Path]:
    """Where profiles are found by name: ZBATCH_CONFIG_DIR, the user's, then the shipped ones."""
    dirs = [Path(d) for d in os.environ.get("ZBATCH_CONFIG_DIR", "").split(os.pathsep) if d]
    dirs.append(Path.home() / ".config" / "zbatch" / "profiles")
    dirs.append(Path(str(resources.files("zbatch_site_configs"))))
    return dirs


PROFILE_SUFFIXES = (".yaml", ".yml")


def _declared_name(path: Path) -> str | None:
    """The `name:` a profile file gives, or None when it cannot be read (reported on load)."""
    try:
        data = _load_yaml(_profile_text(path), str(path))
    except (yaml.YAMLError, RecursionError, ZbatchError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def _scan() -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Names over the whole search path: every file each name may be loaded from (a profile
    answers to its `name:` and its file name), and each profile under its `name:` (its file
    name when it gives none). A folder earlier on the search path hides a later one's names;
    two files of one folder may both claim a name, which is then ambiguous."""
    claims: dict[str, list[Path]] = {}
    primary: dict[str, Path] = {}
    for directory in reversed(search_path()):
        if not directory.is_dir():
            continue
        folder: dict[str, list[Path]] = {}
        for path in sorted(p for s in PROFILE_SUFFIXES for p in directory.glob(f"*{s}")):
            declared = _declared_name(path)
            primary[declared or path.stem] = path
            for name in dict.fromkeys(n for n in (declared, path.stem) if n):
                folder.setdefault(name, []).append(path)
        claims.update(folder)
    return claims, primary


def find_profiles() -> dict[str, Path]:
    """Every profile on the search path by its `name:` (its file name when it gives none)."""
    return dict(sorted(_scan()[1].items()))


def ambiguous_names() -> dict[str, list[Path]]:
    """Names that two files of one folder claim: `profiles check` reports them."""
    return {name: paths for name, paths in _scan()[0].items() if len(paths) > 1}


def load_profile(name_or_path: str) -> Profile:
    """A profile by file path, or by `name:` or file name from the search path."""
    if name_or_path.endswith(PROFILE_SUFFIXES) or os.sep in name_or_path:
        return load_profile_file(name_or_path)
    paths = _scan()[0].get(name_or_path)
    if not paths:
        names = ", ".join(sorted(find_profiles())) or "none"
        raise ProfileError(f"unknown profile {name_or_path!r}; known profiles: {names}")
    if len(paths) > 1:
        raise ProfileError(ambiguity(name_or_path, paths))
    return load_profile_file(paths[0])


def ambiguity(name: str, paths: list[Path]) -> str:
    listed = " and ".join(str(p) for p in paths)
    return (
        f"profile {name!r} is claimed by {listed} (by `name:` or file name): change one "
        "so that each name means one profile"
    )


def missing_paths(profile: Profile) -> list[str]:
    """Files the profile names that are not on this machine, one line each with the fix.

    SSH reads key_file and known_hosts here, before connecting; template_dir is read here
    when scripts are rendered. Not a load error: a profile for another site may still be
    rendered from here, and `profiles check` reports these as errors.
    """
    where = profile.source or profile.name
    problems = []
    connection = profile.connection
    for key in ("key_file", "known_hosts"):
        value = getattr(connection, key)
        if value and not os.path.isfile(os.path.expanduser(value)):
            problems.append(
                f"{where}: connection.{key}: {value} does not exist on this machine, where "
                f"zbatch reads it to connect: create it or correct the path"
            )
    if connection.type == "drmaa":
        drmaa = profile.drmaa
        for key, value in (("sge_root", drmaa.sge_root), ("library_path", drmaa.library_path)):
            if value and not os.path.exists(value):
                problems.append(
                    f"{where}: drmaa.{key}: {value} does not exist on this machine, where "
                    "libdrmaa runs: install SGE's DRMAA library or correct the path"
                )
    if profile.template_dir and not os.path.isdir(os.path.expanduser(profile.template_dir)):
        problems.append(
            f"{where}: template_dir: {profile.template_dir} is not a folder on this machine: "
            "create it with the site's templates, or remove template_dir to use the shipped ones"
        )
    return problems
