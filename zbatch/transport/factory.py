"""Build a transport from the options a job command or a service was given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zbatch.errors import TransportError
from zbatch.ledger import default_state_dir
from zbatch.transport.base import Transport
from zbatch.transport.embedded import EmbeddedTransport


@dataclass(frozen=True)
class TransportConfig:
    kind: str = "embedded"
    embedded_db: str | None = None
    rabbit_conf: str | None = None

    def job_args(self) -> list[str]:
        """The `zbatch wrap` options that make a job reach this same transport."""
        if self.kind == "embedded":
            return ["--transport", "embedded", "--embedded-db", str(self.db_path())]
        args = ["--transport", self.kind]
        return [*args, "--rabbit-conf", self.rabbit_conf] if self.rabbit_conf else args

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
