"""Where RabbitMQ is and how to log in: from a zocalo INI, an amqp:// URL or the environment.

The INI format is the one `--rabbit-conf` takes in python-workflows: a `[rabbit]` section with
host, port, username, password and vhost. zbatch adds `password_file` (so the secret need not
sit in a world-readable config) and a few connection tunables. The password never appears in
`repr()` or `str()`, so settings can be logged safely.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from zbatch.errors import TransportError

URL_ENV = "ZBATCH_RABBIT_URL"
CONF_ENV = "ZBATCH_RABBIT_CONF"
PASSWORD_FILE_ENV = "ZBATCH_RABBIT_PASSWORD_FILE"  # noqa: S105 (a name, not a secret)

# INI key -> field. The first five are workflows' own; the rest are zbatch tunables.
INI_KEYS = {
    "host": "host",
    "port": "port",
    "username": "user",
    "password": "password",
    "vhost": "vhost",
    "heartbeat": "heartbeat_s",
    "prefetch": "prefetch",
    "connection_attempts": "connection_attempts",
    "reconnect": "reconnect_s",
}
URL_QUERY_KEYS = {"heartbeat", "prefetch", "connection_attempts", "reconnect"}


@dataclass(frozen=True)
class RabbitSettings:
    host: str = "localhost"
    port: int = 5672
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    # pika answers heartbeats only inside transport calls: keep gaps between calls well under
    # twice this, or the broker drops the connection (and requeues what was unacked).
    heartbeat_s: int = 30
    # Unacked messages the broker hands one consumer; 1 as in workflows' subscribe().
    prefetch: int = 1
    connection_attempts: int = 3
    retry_delay_s: float = 1.0
    blocked_connection_timeout_s: float = 60.0
    socket_timeout_s: float = 10.0
    # Budget for lazily reconnecting after a lost connection; 0 means a single attempt.
    reconnect_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.host or "," in self.host:
            raise _bad(f"host {self.host!r}: give exactly one host name")
        if not 0 < self.port < 65536:
            raise _bad(f"port {self.port} is out of range")
        if self.prefetch < 1 or self.connection_attempts < 1 or self.heartbeat_s < 0:
            raise _bad("prefetch and connection_attempts must be >= 1, heartbeat >= 0")

    def __str__(self) -> str:
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"amqp://{quote(self.user, safe='')}@{self.host}:{self.port}/{vhost}"

    @property
    def where(self) -> str:
        """host:port/vhost, for error messages (no credentials)."""
        vhost = self.vhost if self.vhost.startswith("/") else f"/{self.vhost}"
        return f"{self.host}:{self.port}{vhost}"

    @classmethod
    def from_ini(cls, path: str | Path) -> RabbitSettings:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            raise _bad(f"cannot read RabbitMQ settings {path}: {exc}") from None
        if not parser.has_section("rabbit"):
            raise _bad(f"{path}: no [rabbit] section")
        items = dict(parser.items("rabbit"))
        password_file = items.pop("password_file", None)
        unknown = sorted(set(items) - set(INI_KEYS))
        if unknown:
            allowed = ", ".join([*INI_KEYS, "password_file"])
            raise _bad(f"{path}: unknown [rabbit] keys {', '.join(unknown)}; allowed: {allowed}")
        settings = _build({INI_KEYS[k]: v for k, v in items.items()}, str(path))
        return settings.with_password_file(password_file) if password_file else settings

    @classmethod
    def from_url(cls, url: str) -> RabbitSettings:
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise _bad(f"only amqp:// URLs are supported, not {parts.scheme or 'no'} scheme")
        try:
            port = parts.port
        except ValueError:
            raise _bad("the URL's port is not a number") from None
        values: dict[str, Any] = {"host": parts.hostname or "localhost", "port": port or 5672}
        if parts.username is not None:
            values["user"] = unquote(parts.username)
        if parts.password is not None:
            values["password"] = unquote(parts.password)
        if parts.path not in ("", "/"):
            values["vhost"] = unquote(parts.path[1:])
        query = dict(parse_qsl(parts.query))
        unknown = sorted(set(query) - URL_QUERY_KEYS)
        if unknown:
            raise _bad(
                f"unknown URL options {', '.join(unknown)}; allowed: {sorted(URL_QUERY_KEYS)}"
            )
        values.update({INI_KEYS[k]: v for k, v in query.items()})
        return _build(values, "the RabbitMQ URL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RabbitSettings:
        """$ZBATCH_RABBIT_URL or $ZBATCH_RABBIT_CONF (not both), else the defaults."""
        env = os.environ if environ is None else environ
        url, conf = env.get(URL_ENV), env.get(CONF_ENV)
        if url and conf:
            raise _bad(f"set {URL_ENV} or {CONF_ENV}, not both")
        settings = cls.from_url(url) if url else cls.from_ini(conf) if conf else cls()
        password_file = env.get(PASSWORD_FILE_ENV)
        return settings.with_password_file(password_file) if password_file else settings

    def with_password_file(self, path: str) -> RabbitSettings:
        try:
            secret = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _bad(f"cannot read the RabbitMQ password file {path}: {exc.strerror}") from None
        return replace(self, password=secret)


def _build(values: dict[str, str | int], source: str) -> RabbitSettings:
    """Coerce strings to each field's type, naming the bad key rather than failing on it."""
    kinds = {f.name: f.type for f in fields(RabbitSettings)}
    converted: dict[str, Any] = {}
    for name, value in values.items():
        kind = {"int": int, "float": float}.get(str(kinds[name]), str)
        try:
            converted[name] = kind(value)
        except ValueError:
            raise _bad(f"{source}: {name} must be a number, not {value!r}") from None
    return RabbitSettings(**converted)


def _bad(message: str) -> TransportError:
    return TransportError(message, transient=False)
