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
from zbatch.transport.stomp_settings import CONF_ENV as STOMP_CONF_ENV
from zbatch.transport.stomp_settings import URL_ENV as STOMP_URL_ENV
from zbatch.transport.stomp_settings import StompSettings

# Per broker transport: the option naming its settings file, and the variable that may.
CONF_OPTION = {"pika": ("--rabbit-conf", CONF_ENV), "stomp": ("--stomp-conf", STOMP_CONF_ENV)}
URL_VARIABLE = {"pika": URL_ENV, "stomp": STOMP_URL_ENV}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportConfig:
    kind: str = "embedded"
    embedded_db: str | None = None
    rabbit_conf: str | None = None
    stomp_conf: str | None = None
    # STOMP settings given piece by piece (zocalo.wrap's --stomp-host ...): used as they are.
    stomp: StompSettings | None = None

    def job_args(self) -> list[str]:
        """The `zbatch wrap` options that make a job reach this same transport.

        For a broker that is a reference to the settings file this process was given (by
        `--rabbit-conf`/`--stomp-conf` or $ZBATCH_RABBIT_CONF/$ZBATCH_STOMP_CONF), as an
        absolute path since the job runs elsewhere; a profile's `job_broker_config` replaces
        it (`job_transport_args`).
        """
        if self.kind == "embedded":
            return ["--transport", "embedded", "--embedded-db", str(self.db_path())]
        args = ["--transport", self.kind]
        option, variable = CONF_OPTION[self.kind]
        given = self.rabbit_conf if self.kind == "pika" else self.stomp_conf
        conf = given or os.environ.get(variable)
        if not conf:
            return args
        return [*args, option, str(Path(conf).expanduser().absolute())]

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
    if config.kind == "stomp":
        from zbatch.transport.stomp import StompTransport

        # Redeliveries are counted beside the ledger (zbatch.transport.stomp_deliveries).
        counts = default_state_dir() / "stomp-deliveries.sqlite"
        if config.stomp is not None:
            return StompTransport(config.stomp, counts)
        return StompTransport.from_conf(config.stomp_conf, counts)
    raise TransportError(
        f"unknown transport {config.kind!r}; use embedded, pika or stomp", transient=False
    )


def job_transport_args(args: list[str], broker_config: str | None) -> list[str]:
    """A job's transport options with the profile's broker reference, when it gives one.

    `broker_config` (a profile's `job_broker_config`) is a `[rabbit]` (pika) or `[stomp]`
    (stomp) INI path on the host where jobs run; it replaces the `--rabbit-conf` or
    `--stomp-conf` the dispatcher passes on. The embedded transport needs no credentials
    and is left as it is.
    """
    kind = args[args.index("--transport") + 1] if "--transport" in args[:-1] else None
    if kind not in CONF_OPTION:
        return list(args)
    option, _variable = CONF_OPTION[kind]
    kept: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == option:
            next(rest, None)
        else:
            kept.append(arg)
    if broker_config:
        return [*kept, option, broker_config]
    url_variable = URL_VARIABLE[kind]
    if os.environ.get(url_variable) and option not in args:
        _warn_once(
            f"jobs get no broker settings: this dispatcher has them from ${url_variable}, "
            "which jobs never receive; set job_broker_config in the profile (an INI the "
            f"jobs can read) or start the dispatcher with {option}"
        )
    elif kind == "pika" and os.environ.get(PASSWORD_FILE_ENV):
        _warn_once(
            f"jobs do not receive ${PASSWORD_FILE_ENV}: name the password file in the "
            "[rabbit] INI (password_file = ...) or set job_broker_config in the profile"
        )
    return list(args)


@functools.lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
    log.warning(message)
