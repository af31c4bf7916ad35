"""Recipe commands checked with bash itself before they are placed in a job script.

The job script runs a step's commands inside `( ... ) &`. Text that bash reads as a complete
program on its own (no syntax error, no warning, no trailing line continuation, at least one
command) stays inside that subshell; anything else could close it early, swallow the lines
after it, or leave a script that does not parse at all.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from zbatch.errors import ParameterError

_BASH = shutil.which("bash", path="/usr/bin:/bin") or "/bin/bash"
_BASH_PREFIX = re.compile(r"^\S*bash: ")


def check_commands(text: str, what: str) -> None:
    problem = _problem(text)
    if problem:
        raise ParameterError(f"{what}: {problem}")


@functools.lru_cache(maxsize=1024)
def _problem(text: str) -> str | None:
    """What is wrong with `text` as the body of a subshell (cached: recipes repeat theirs)."""
    lines = text.split("\n")
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        return "holds no command"
    if text.rstrip("\n").endswith("\\"):
        return "ends with a line continuation ('\\'), which would join the job script's next line"
    try:
        done = subprocess.run(
            [_BASH, "-n"],
            input=text,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot be checked with bash: {exc}"
    if done.returncode != 0 or done.stderr.strip():
        first = (done.stderr.strip().splitlines() or ["syntax error"])[0]
        return f"is not a complete bash program: {_BASH_PREFIX.sub('', first)}"
    return None
