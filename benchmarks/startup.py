"""Start-up time of the `zbatch` command, beside the interpreter's own in the same run.

    python benchmarks/startup.py [--runs N] [--as-is]

Times `zbatch --version`, `zbatch --help` and `zbatch wrap --help` (every job starts with
`zbatch wrap`), each as a new process, N times (default 15), in rounds that take every command
once so that a busy machine slows them all alike; prints a markdown table of the medians next
to `python -c pass` and `python -c "import click"`, the floor no click program goes under.

By default compiled bytecode is cached (in a private folder, warmed up first), as an installed
zbatch has it; `--as-is` keeps this environment as it is, where PYTHONDONTWRITEBYTECODE=1
means zbatch's own modules are compiled from source at every start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
ZBATCH = str(Path(sys.executable).parent / "zbatch")

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", [PYTHON, "-c", "pass"]),
    ('python -c "import click"', [PYTHON, "-c", "import click"]),
    ("zbatch --version", [ZBATCH, "--version"]),
    ("zbatch --help", [ZBATCH, "--help"]),
    ("zbatch wrap --help", [ZBATCH, "wrap", "--help"]),
]


def once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - started


def measure(runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    for _, argv in COMMANDS:  # warm-up: bytecode written, files in the page cache
        once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
    for _ in range(runs):
        for name, argv in COMMANDS:
            times[name].append(once(argv, env))
    return times


def table(times: dict[str, list[float]]) -> str:
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    bare, click = medians["python -c pass"], medians['python -c "import click"']
    lines = [
        "| command | median ms | range ms | over `python -c pass` | over `import click` |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        low, high = min(values) * 1000, max(values) * 1000
        median = medians[name]
        lines.append(
            f"| `{name}` | {median:.1f} | {low:.0f}-{high:.0f} | "
            f"{median - bare:+.1f} ms | {median - click:+.1f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (median shown)")
    parser.add_argument("--as-is", action="store_true", help="keep the bytecode settings as set")
    args = parser.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="zbatch-startup-") as cache:
        if args.as_is:
            how = "bytecode settings as set"
            if env.get("PYTHONDONTWRITEBYTECODE"):
                how += " (PYTHONDONTWRITEBYTECODE: zbatch compiled from source every start)"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
            how = "bytecode cached"
        times = measure(args.runs, env)
    print(f"### Start-up, median of {args.runs} runs; {how}\n\n{table(times)}")


if __name__ == "__main__":
    main()
