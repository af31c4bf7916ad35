"""Build a transport from the options a job command or a service was given.

Jobs never receive the dispatcher's broker credentials by value (no URL, no password on a
command line, in a script or in the job's environment): `zbatch wrap` is told where a `[rabbit]`
INI is, the profile's `job_broker_config` or else the file the dispatcher itself was given.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from zbatch.errors import TransportError
from zbatch.paths import default_state_dir
from zbatch.transport.base import Transport
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.rabbit_settings import CONF_ENV, PASSWORD_FILE_ENV, URL_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportConfig:
    kind: str = "embedded"
    embedded_db: str | None = None
    rabbit_conf: str | None = None

    def job_args(self) -> list[str]:
        """The `zbatch wrap` options that make a job reach this same transport.

        For RabbitMQ that is a reference to the settings file this process was given (by
        `--rabbit-conf` or $ZBATCH_RABBIT_CONF), as an absolute path since the job runs
        elsewhere; a profile's `job_broker_config` replaces it (`job_transport_args`).
        """
        if self.kind == "embedded":
            return ["--transport", "embedded", "--embedded-db", str(self.db_path())]
        args = ["--transport", self.kind]
        conf = self.rabbit_conf or os.environ.get(CONF_ENV)
        if not conf:
            return args
        return [*args, "--rabbit-conf", str(Path(conf).expanduser().absolute())]

    def db_path(self) -> Path:
        if self.embedded_db:
            return Path(self.embedded_db).expanduser().absolute()
        return default_state_dir() / "queue.sqlite"


def make_transport(config: TransportConfig) -> Transport:
    if config.kind == "embedded":
        return EmbeddedTransport(config.db_path())
    if config.kind == "pika":
        from zbatch.transport.pika import PikaTransport

        return PikaTransport.from_conf(config.rabbit_conf)
    raise TransportError(
        f"unknown transport {config.kind!r}; use embedded or pika", transient=False
    )


def job_transport_args(args: list[str], broker_config: str | None) -> list[str]:
    """A job's transport options with the profile's broker reference, when it gives one.

    `broker_config` (a profile's `job_broker_config`) is a `[rabbit]` INI path on the host
    where jobs run; it replaces the `--rabbit-conf` the dispatcher passes on. The embedded
    transport needs no credentials and is left as it is.
    """
    kind = args[args.index("--transport") + 1] if "--transport" in args[:-1] else None
    if kind != "pika":
        return list(args)
    kept: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--rabbit-conf":
            next(rest, None)
        else:
            kept.append(arg)
    if broker_config:
        return [*kept, "--rabbit-conf", broker_config]
    if os.environ.get(URL_ENV) and "--rabbit-conf" not in args:
        _warn_once(
            f"jobs get no RabbitMQ settings: this dispatcher has them from ${URL_ENV}, which "
            "jobs never receive; set job_broker_config in the profile (a [rabbit] INI the "
            "jobs can read) or start the dispatcher with --rabbit-conf"
        )
    elif os.environ.get(PASSWORD_FILE_ENV):
        _warn_once(
            f"jobs do not receive ${PASSWORD_FILE_ENV}: name the password file in the "
            "[rabbit] INI (password_file = ...) or set job_broker_config in the profile"
        )
    return list(args)


@functools.lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
    log.warning(message)
