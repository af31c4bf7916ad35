"""Site profiles: which cluster a step goes to, how to reach it, and what it may ask for.

A profile is a YAML file validated by pydantic with unknown keys forbidden, so a typo is an
error that names the file, the key and what would be valid, never a silently ignored setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zbatch.errors import ParameterError, ProfileError
from zbatch.units import parse_duration, parse_memory_mb

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
    # SSH connections opened at most, each with its own remote shell, for concurrent commands:
    # as many as the dispatcher's default --workers, so no submission waits for a shell.
    pool_size: int = Field(default=8, ge=1, le=64)


class Defaults(_Strict):
    partition: Name | None = None
    account: Name | None = None
    qos: Name | None = None
    cpus: int = Field(default=1, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0)

    @field_validator("time_limit_s", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else _checked(parse_duration, value)

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return None if value is None else _checked(parse_memory_mb, value)


class Limits(_Strict):
    max_cpus: int | None = Field(default=None, ge=1)
    max_memory_mb: int | None = Field(default=None, ge=1)
    max_time_limit_s: int | None = Field(default=None, ge=1)
    max_gpus: int | None = Field(default=None, ge=0)

    @field_validator("max_time_limit_s", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else _checked(parse_duration, value)

    @field_validator("max_memory_mb", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return None if value is None else _checked(parse_memory_mb, value)


class Resources(_Strict):
    """The site's own names for resources, so no site needs a code fork."""

    slurm_memory: Literal["mem", "mem-per-cpu"] = "mem"
    sge_memory: Literal["h_vmem", "m_mem_free", "mem_free"] | None = "h_vmem"
    sge_parallel_environment: Name = "smp"
    sge_gpu_resource: Name = "gpu"


class LocalConfig(_Strict):
    slots: int = Field(default=2, ge=1, le=1024)
    state_dir: str | None = None


class Profile(_Strict):
    name: Name
    description: str = ""
    scheduler: Literal["local", "slurm", "sge"]
    connection: ConnectionConfig = ConnectionConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    resources: Resources = Resources()
    local: LocalConfig = LocalConfig()
    extra_directives: list[str] = []
    setup: list[str] = []
    environment: dict[Name, str] = {}
    workdir_root: str | None = None
    template_dir: str | None = None
    allow_commands: bool = False
    allow_raw_scheduler_args: bool = False
    queue_mapping: dict[str, Name] = {}
    zbatch_command: list[str] | None = None
    poll_interval_s: float = Field(default=2.0, gt=0)
    source: str = Field(default="", exclude=True)

    @field_validator("extra_directives", "setup")
    @classmethod
    def _single_lines(cls, value: list[str]) -> list[str]:
        for line in value:
            if "\n" in line or "\r" in line or "\0" in line:
                raise ValueError(f"{line!r} spans several lines; give one line per entry")
        return value

    @field_validator("workdir_root", "template_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"{value!r} must be an absolute path")
        return value


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        model: type[BaseModel] = Profile
        for part in first["loc"][:-1]:
            annotation = model.model_fields[str(part)].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        allowed = ", ".join(k for k in model.model_fields if k != "source")
        message = f"unknown key; allowed here: {allowed}"
    return f"{source}: {key}: {message}"


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping of keys to values")
    try:
        return Profile.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ProfileError(_format_error(source, exc)) from None


def load_profile_file(path: str | Path) -> Profile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_profile(data, str(path))


def search_path() -> list[Path]:
    """Where profiles are found by name: ZBATCH_CONFIG_DIR, the user's, then the shipped ones."""
    dirs = [Path(d) for d in os.environ.get("ZBATCH_CONFIG_DIR", "").split(os.pathsep) if d]
    dirs.append(Path.home() / ".config" / "zbatch" / "profiles")
    dirs.append(Path(str(resources.files("zbatch_site_configs"))))
    return dirs


def find_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(search_path()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found[path.stem] = path
    return found


def load_profile(name_or_path: str) -> Profile:
    """A profile by file path, or by name from the search path."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_profile_file(name_or_path)
    known = find_profiles()
    if name_or_path not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ProfileError(f"unknown profile {name_or_path!r}; known profiles: {names}")
    return load_profile_file(known[name_or_path])
