"""Where RabbitMQ is and how to log in: from a zocalo INI, an amqp:// URL or the environment.

The INI format is the one `--rabbit-conf` takes in python-workflows: a `[rabbit]` section with
host, port, username, password and vhost. zbatch adds `password_file` (so the secret need not
sit in a world-readable config) and a few connection tunables. The password never appears in
`repr()` or `str()`, so settings can be logged safely.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from zbatch.transport.ini_settings import bad as _bad
from zbatch.transport.ini_settings import read_password_file, read_section

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
    # Other spellings of the password (as percent-encoded in a URL), redacted like it.
    password_forms: tuple[str, ...] = field(default=(), repr=False, compare=False)
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

    def redact(self, text: str) -> str:
        """`text` with the password replaced by ***, in every spelling it may appear in: as
        is, percent-encoded (any mix of encoded characters, either case), `+` for spaces."""
        for secret in sorted({*self.password_forms}, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return _spellings(self.password).sub("***", text) if self.password else text

    @property
    def where(self) -> str:
        """host:port/vhost, for error messages (no credentials)."""
        vhost = self.vhost if self.vhost.startswith("/") else f"/{self.vhost}"
        return f"{self.host}:{self.port}{vhost}"

    @classmethod
    def from_ini(cls, path: str | Path) -> RabbitSettings:
        items, password_file = read_section(path, "rabbit", "RabbitMQ", list(INI_KEYS))
        settings = _build({INI_KEYS[k]: v for k, v in items.items()}, str(path))
        return settings.with_password_file(password_file) if password_file else settings

    @classmethod
    def from_url(cls, url: str) -> RabbitSettings:
        """Settings from `amqp://user:password@host:port/vhost?option=value`.

        Errors never quote the URL: it may hold the password.
        """
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:  # e.g. an unclosed "[" of an IPv6 address
            raise _bad(
                "the RabbitMQ URL is malformed (check the host and any [IPv6] brackets)"
            ) from None
        if parts.scheme != "amqp":
            raise _bad(f"only amqp:// URLs are supported, not {parts.scheme or 'no'} scheme")
        try:
            port = parts.port
        except ValueError:
            raise _bad("the URL's port is not a number from 1 to 65535") from None
        values: dict[str, Any] = {"host": hostname or "localhost", "port": port or 5672}
        if parts.username is not None:
            values["user"] = unquote(parts.username)
        if parts.password is not None:
            values["password"] = unquote(parts.password)
            values["password_forms"] = (parts.password,)
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
        secret = read_password_file(path, "RabbitMQ")
        return replace(self, password=secret, password_forms=())


@functools.lru_cache(maxsize=8)
def _spellings(password: str) -> re.Pattern[str]:
    """Matches `password` with each character as is or percent-encoded (UTF-8, any case)."""
    parts = []
    for char in password:
        encoded = "".join(f"%{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
        options = [re.escape(char), f"(?i:{re.escape(encoded)})"] + (["\\+"] if char == " " else [])
        parts.append(f"(?:{'|'.join(options)})")
    return re.compile("".join(parts))


def _build(values: dict[str, Any], source: str) -> RabbitSettings:
    """Coerce strings to each field's type, naming the bad key rather than failing on it."""
    kinds = {f.name: f.type for f in fields(RabbitSettings)}
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if name == "password_forms":
            converted[name] = value
            continue
        kind = {"int": int, "float": float}.get(str(kinds[name]), str)
        try:
            converted[name] = kind(value)
        except ValueError:
            # The value is not shown: a password typed on the wrong line would be.
            raise _bad(f"{source}: {name} must be a number") from None
    return RabbitSettings(**converted)
