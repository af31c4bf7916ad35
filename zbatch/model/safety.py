"""The one validation layer every value from a message passes before it reaches a job.

Everything in a step message comes from other people, so each check here is written to be
impossible to fool:
- patterns match the whole value (`fullmatch`: `$` would also match before a final newline);
- numbers are read from ASCII digits only, with bounds (`"²".isdigit()` is true, `int("²")` fails);
- text is refused when it holds control characters, lone surrogates or is too long, so no
  value a message controls can start a new line, a directive or a command in a job script;
- environment names are shell identifiers outside a deny list of loader and interpreter
  variables, unless the profile allows them by name;
- paths are absolute, normalised, then resolved (symlinks included) and confined to the
  profile's `workdir_root`.
Scheduler directives (`#SBATCH`, `#$`) are not parsed by a shell, so quoting cannot protect
them: their values must match patterns that admit no whitespace, quote or metacharacter.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable

from zbatch.errors import ParameterError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# No ":" (qsub reads "-o a:b" as host:path) and nothing a shell or directive would parse.
PATH = re.compile(r"/[A-Za-z0-9_./+@%,=~-]{0,4000}")
CONSTRAINT = re.compile(r"[A-Za-z0-9_.&|!*()\[\],:-]{1,512}")
ARRAY = re.compile(r"[0-9][0-9,:%-]{0,127}")
RAW_ARG = re.compile(r"[A-Za-z0-9_.,:=/@+-]{1,256}")
DIGITS = re.compile(r"[0-9]{1,12}")
MAX_TEXT = 1024 * 1024
MAX_LINE = 64 * 1024  # one value that becomes one line of a script or one argument
# Above any real count of cpus, nodes, tasks or gpus; keeps arithmetic on them cheap.
MAX_COUNT = 1_000_000

# Control characters: C0 (bar tab), DEL and C1. NEL (U+0085) and the Unicode line and
# paragraph separators are refused too: some tools treat them as line breaks.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# Variables that change which program runs or what it loads: a message may not set them,
# whatever the profile says of commands, unless the profile allows one by name.
DENIED_ENV = frozenset(
    {
        "PATH", "ENV", "BASH_ENV", "IFS", "PS4", "SHELLOPTS", "BASHOPTS", "CDPATH",
        "GLOBIGNORE", "PROMPT_COMMAND", "HOME", "SHELL", "TMPDIR", "PERL5LIB", "PERLLIB",
        "PERL5OPT", "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS", "CLASSPATH", "GCONV_PATH", "HOSTALIASES", "LOCALDOMAIN",
        "RES_OPTIONS", "NLSPATH", "MALLOC_CHECK_", "TZDIR", "GIT_SSH", "GIT_SSH_COMMAND",
        "SSH_ASKPASS", "EDITOR", "VISUAL", "PAGER", "LESSOPEN", "MODULEPATH", "LOADEDMODULES",
        "NSLOTS", "JOB_ID", "ZOCALO_CONFIG",
        # bash's EXECIGNORE hides programs from the PATH search; glibc's LOCPATH loads locales
        "EXECIGNORE", "LOCPATH", "JDK_JAVA_OPTIONS", "JAVA_HOME", "GEM_PATH", "GEM_HOME",
        "R_LIBS", "R_LIBS_USER", "R_LIBS_SITE", "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON",
        "R_ENVIRON_USER", "JULIA_LOAD_PATH", "JULIA_DEPOT_PATH", "QT_PLUGIN_PATH", "GTK_PATH",
        "GTK_MODULES", "GIO_EXTRA_MODULES", "GST_PLUGIN_PATH", "OMP_TOOL_LIBRARIES",
        "DOTNET_STARTUP_HOOKS", "MODULESHOME", "_LMFILES_", "CURL_HOME", "WGETRC",
        # where TLS trust and web traffic go
        "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
        "FTP_PROXY", "NO_PROXY",
    }
)  # fmt: skip
DENIED_ENV_PREFIXES = (
    "LD_", "DYLD_", "PYTHON", "BASH_", "ZBATCH_", "SLURM_", "SBATCH_", "SRUN_", "SALLOC_",
    "SGE_", "OMPI_", "I_MPI_", "HYDRA_", "PMI_", "PMIX_", "LUA_", "TCL", "KRB5", "SSL_",
    "OPENSSL_", "GLIBC_", "MALLOC_", "GIT_", "SSH_", "XDG_", "PERL", "RUBY", "NODE_", "LMOD_",
    "CORECLR_",
)  # fmt: skip


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def check(pattern: re.Pattern[str], value: object, what: str) -> str:
    """A string that matches `pattern` as a whole, or a ParameterError naming `what`."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ParameterError(
            f"{what} {_shown(value)} is not allowed: it must match {pattern.pattern}"
        )
    return value


def check_text(value: object, what: str, *, multiline: bool = False, limit: int = MAX_TEXT) -> str:
    """Text that will be shell-quoted or stored: refuse what no job script should carry.

    Single-line text (every value a message puts into a script) has no control characters
    at all; `multiline` (commands a profile allows) keeps newlines and tabs only.
    """
    if not isinstance(value, str):
        raise ParameterError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise ParameterError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if "\0" in value:
        raise ParameterError(f"{what} contains a NUL byte")
    if _SURROGATE.search(value):
        raise ParameterError(f"{what} contains a lone surrogate (not valid Unicode text)")
    bad = (_CONTROL_MULTILINE if multiline else _CONTROL).search(value)
    if bad:
        kind = "a line break" if bad.group() in "\n\r\u2028\u2029\x85" else "a control character"
        raise ParameterError(f"{what} contains {kind} ({bad.group()!r}), which is not allowed")
    return value


def parse_int(value: object, what: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    """A whole number from an int or a string of ASCII digits, within [minimum, maximum]."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and DIGITS.fullmatch(value.strip(" ")):
        number = int(value.strip(" "))
    if number is None or not minimum <= number <= maximum:
        raise ParameterError(
            f"{what} {_shown(value)} must be a whole number from {minimum} to {maximum}"
        )
    return number


def env_name_denied(name: str) -> bool:
    upper = name.upper()
    return upper in DENIED_ENV or upper.startswith(DENIED_ENV_PREFIXES)


def check_env_name(name: object, what: str, allowed: Iterable[str] = ()) -> str:
    """A shell identifier that does not steer loaders or interpreters (unless allowed)."""
    key = check(ENV_KEY, name, what)
    if env_name_denied(key) and key not in set(allowed):
        raise ParameterError(
            f"{what} {key!r} is not allowed: it changes which programs run or what they load "
            "(a profile may allow it by name in allowed_environment)"
        )
    return key


def check_path(value: object, what: str) -> str:
    """An absolute, normalised path without `..` and without shell or directive syntax."""
    if not isinstance(value, str):
        raise ParameterError(f"{what} must be a string path, not {type(value).__name__}")
    check_text(value, what, limit=4096)
    if not value.startswith("/"):
        raise ParameterError(f"{what} {value!r} must be an absolute path")
    if ".." in value.split("/"):
        raise ParameterError(f"{what} {value!r} must not contain '..'")
    check(PATH, value, what)
    return posixpath.normpath(value)


def is_within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_within(
    path: str,
    root: str | None,
    what: str,
    resolve: Callable[[str], str] | None = os.path.realpath,
) -> str:
    """`path` (already checked) lies under `root`, lexically and once symlinks are resolved.

    `resolve` maps a path to its real path on the host the job runs on (local `realpath` by
    default; a remote connection passes its own); None checks the text only. The path is
    returned as given: the job uses it, and it was just shown to resolve inside the root.
    """
    if root is None:
        return path
    root = posixpath.normpath(root)
    if not is_within(path, root):
        raise ParameterError(f"{what} {path!r} is outside the profile's workdir_root {root!r}")
    if resolve is not None:
        real_root, real = resolve(root), resolve(path)
        if not is_within(real, real_root):
            raise ParameterError(
                f"{what} {path!r} resolves to {real!r}, outside the profile's workdir_root "
                f"{root!r} (a symbolic link leads out of it)"
            )
    return path


def safe_tag(text: str, length: int = 12) -> str:
    """A file-name-safe fragment of an identifier that may come from a hostile message."""
    cleaned = re.sub(r"[^A-Za-z0-9-]", "", text)[:length]
    return cleaned or "noid"
