"""Where ActiveMQ's STOMP port is and how to log in: a zocalo `[stomp]` INI, a stomp:// URL or
the environment.

The INI is the one workflows' StompTransport reads (`--stomp-conf`): a `[stomp]` section with
host, port, username, password and prefix (the namespace put before every queue and topic
name). zbatch adds `password_file`, as for RabbitMQ. The password never appears in `repr()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from zbatch.transport.ini_settings import bad as _bad
from zbatch.transport.ini_settings import read_password_file, read_section

URL_ENV = "ZBATCH_STOMP_URL"
CONF_ENV = "ZBATCH_STOMP_CONF"
INI_KEYS = ("host", "port", "username", "password", "prefix")


@dataclass(frozen=True)
class StompSettings:
    host: str = "localhost"
    port: int = 61613
    username: str = ""
    password: str = field(default="", repr=False)
    # workflows' namespace: "zocalo" puts queue "x" at /queue/zocalo.x
    prefix: str = ""
    # Unacked messages the broker hands one subscription; 1 as workflows' subscribe().
    prefetch: int = 1
    # Budget for lazily reconnecting after a lost connection; 0 means a single attempt.
    reconnect_s: float = 60.0
    # How long a receipt (the broker's answer to a send or commit) may take.
    receipt_timeout_s: float = 30.0
    # STOMP heart-beats both ways, in milliseconds (stomp.py answers them on its own thread).
    heartbeat_ms: int = 10000
    # Deliveries of one message before it is dead-lettered (zocalo's quorum delivery limit).
    max_deliveries: int = 5

    def __post_init__(self) -> None:
        if not self.host or "," in self.host:
            raise _bad(f"host {self.host!r}: give exactly one host name")
        if not 0 < self.port < 65536:
            raise _bad(f"port {self.port} is out of range")
        if self.prefetch < 1:
            raise _bad("prefetch must be >= 1")

    def __str__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        return f"stomp://{who}{self.host}:{self.port} (prefix {self.prefix!r})"

    @property
    def namespace(self) -> str:
        """The prefix as workflows applies it: with a trailing dot, or nothing."""
        if self.prefix and not self.prefix.endswith("."):
            return self.prefix + "."
        return self.prefix

    def redact(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text

    @classmethod
    def from_ini(cls, path: str | Path) -> StompSettings:
        items, password_file = read_section(path, "stomp", "STOMP", list(INI_KEYS))
        settings = _build(items, str(path))
        return settings.with_password_file(password_file) if password_file else settings

    @classmethod
    def from_url(cls, url: str) -> StompSettings:
        """`stomp://user:password@host:port?prefix=zocalo`; errors never quote the URL."""
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
            port = parts.port
        except ValueError:
            raise _bad("the STOMP URL is malformed (check the host and port)") from None
        if parts.scheme != "stomp":
            raise _bad(f"only stomp:// URLs are supported, not {parts.scheme or 'no'} scheme")
        values = {"host": hostname or "localhost", "port": str(port or 61613)}
        if parts.username is not None:
            values["username"] = unquote(parts.username)
        if parts.password is not None:
            values["password"] = unquote(parts.password)
        query = dict(parse_qsl(parts.query))
        unknown = sorted(set(query) - {"prefix"})
        if unknown:
            raise _bad(f"unknown STOMP URL options {', '.join(unknown)}; allowed: prefix")
        values.update(query)
        return _build(values, "the STOMP URL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StompSettings:
        """$ZBATCH_STOMP_URL or $ZBATCH_STOMP_CONF (not both), else the defaults."""
        env = os.environ if environ is None else environ
        url, conf = env.get(URL_ENV), env.get(CONF_ENV)
        if url and conf:
            raise _bad(f"set {URL_ENV} or {CONF_ENV}, not both")
        return cls.from_url(url) if url else cls.from_ini(conf) if conf else cls()

    def with_password_file(self, path: str) -> StompSettings:
        secret = read_password_file(path, "STOMP")
        return replace(self, password=secret)


def _build(values: dict[str, str], source: str) -> StompSettings:
    try:
        port = int(values.pop("port", "61613"))
    except ValueError:
        raise _bad(f"{source}: port must be a number") from None
    return StompSettings(
        host=values.get("host", "localhost"),
        port=port,
        username=values.get("username", ""),
        password=values.get("password", ""),
        prefix=values.get("prefix", ""),
    )
