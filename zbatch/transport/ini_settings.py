"""The zocalo broker INI files (`[rabbit]`, `[stomp]`) and password files, read one way.

Errors name the file and the line but never quote a line: it may hold the password.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from zbatch.errors import TransportError


def read_section(
    path: str | Path, section: str, broker: str, keys: list[str]
) -> tuple[dict[str, str], str | None]:
    """The `[section]` of an INI file as text values, and its `password_file` if given.

    `keys` are the keys allowed besides `password_file`; `broker` names the broker in
    errors ("RabbitMQ", "STOMP")."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise bad(f"cannot read {broker} settings {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise bad(f"cannot read {broker} settings {path}: not UTF-8 text") from None
    except configparser.Error as exc:
        # configparser quotes the offending line, which may be the password: never shown.
        raise bad(f"cannot read {broker} settings {path}: {ini_problem(exc)}") from None
    if not parser.has_section(section):
        raise bad(f"{path}: no [{section}] section")
    items = dict(parser.items(section))
    password_file = items.pop("password_file", None)
    unknown = sorted(set(items) - set(keys))
    if unknown:
        allowed = ", ".join([*keys, "password_file"])
        raise bad(f"{path}: unknown [{section}] keys {', '.join(unknown)}; allowed: {allowed}")
    return items, password_file


def read_password_file(path: str, broker: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise bad(f"cannot read the {broker} password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad(f"the {broker} password file {path} is not UTF-8 text") from None


def ini_problem(exc: configparser.Error) -> str:
    """What is wrong with an INI file, by line number, without quoting the line."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(number) for number, _line in exc.errors)
        return f"line {lines} is not 'key = value' (the line is not shown: it may hold a secret)"
    if isinstance(exc, configparser.DuplicateOptionError | configparser.DuplicateSectionError):
        return str(exc)  # names the section and key only
    return type(exc).__name__


def bad(message: str) -> TransportError:
    """A settings mistake: permanent (trying again cannot help)."""
    return TransportError(message, transient=False)
