"""xia2 (automated data reduction), run as python-dlstbx's xia2 wrapper runs it.

Command: `xia2`, then `key=value` for each item of `job_parameters.xia2` (a list repeats the
key; `images`, comma-separated `path:start:end` entries, becomes one `image=` per entry and is
skipped when empty), `nproc=<allocated cpus>` unless given, then `job_parameters.
ispyb_parameters` (d_min, spacegroup and unit_cell under their xia2.settings names, other keys
verbatim). The tool runs in `<working_directory>/xia2-<pipeline>` (`xia2` without a pipeline).

Success: exit 0, `xia2.json` present, neither `xia2.error` nor `xia2-error.txt`, and both
`DataFiles/` and `LogFiles/` present. The summary comes from xia2.json, whose first crystal's
`_scaler` holds `_scalr_likely_spacegroups[0]`, `_scalr_cell` and `_scalr_statistics` (one
entry per wavelength; each statistic is `[overall, low shell, high shell]`), plus
`scaled_mtz`: DataFiles' `*_free.mtz` (or `*scaled.mtz`), the input of phasing steps.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from zbatch.errors import WrapperError
from zbatch.wrapper import Outcome, ResultFile, Wrapper, check_argument

# The summary key that carries the scaled reflection file to the next step (fast_ep reads it).
SCALED_MTZ_KEY = "scaled_mtz"

PHIL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_NAME = 256
# Characters libtbx.phil reads as syntax inside one command-line assignment: whitespace and ';'
# end it, '{' '}' open scopes, quotes group words, '=' starts another assignment, '$'
# substitutes another parameter and '\' escapes. '#' starts a comment only where a word would
# start (DIALS documents `template=x_####.cbf`), so it is refused at the start of a value only.
PHIL_SYNTAX = re.compile(r"""[\s;{}"'=$\\]""")
PIPELINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
ISPYB_NAMES = {
    "d_min": "xia2.settings.resolution.d_min",
    "spacegroup": "xia2.settings.space_group",
    "unit_cell": "xia2.settings.unit_cell",
}
ERROR_FILES = ("xia2-error.txt", "xia2.error")
TOP_LEVEL_LOGS = ("xia2.html", "xia2.txt", "xia2.error", "xia2-error.txt")
STATISTICS = {
    "d_min": "High resolution limit",
    "d_max": "Low resolution limit",
    "completeness": "Completeness",
    "multiplicity": "Multiplicity",
    "i_over_sigma": "I/sigma",
    "cc_half": "CC half",
}


def phil_value(value: object, what: str) -> str:
    """One phil value that stays one value: no phil syntax, no option look-alike."""
    # A JSON true/false is a phil bool; check_argument refuses bools as ambiguous.
    text = str(value) if isinstance(value, bool) else check_argument(value, what)
    if not text:
        raise WrapperError(f"{what} is empty")
    if text.startswith("-"):
        raise WrapperError(f"{what} {text[:60]!r} starts with '-', like a command-line option")
    if text.startswith("#"):
        raise WrapperError(f"{what} {text[:60]!r} starts with '#', which phil reads as a comment")
    found = PHIL_SYNTAX.search(text)
    if found or not text.isprintable():
        char = found.group() if found else next(c for c in text if not c.isprintable())
        raise WrapperError(
            f"{what} {text[:60]!r} contains {char!r}, which would split or change the argument"
        )
    return text


def phil_assignment(key: object, value: object, where: str) -> str:
    """`key=value` as one argument that the tool reads as exactly one assignment."""
    if not isinstance(key, str) or len(key) > MAX_NAME or not PHIL_NAME.fullmatch(key):
        raise WrapperError(
            f"{where}: parameter name {str(key)[:60]!r} is not a phil name "
            "(letters, digits and '_', joined by '.')"
        )
    return f"{key}={phil_value(value, f'{where}.{key}')}"


def settings_dict(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key) or {}
    if not isinstance(value, dict):
        raise WrapperError(f"job_parameters.{key} must be an object of parameter names to values")
    return value


def _ispyb_value(key: str, value: object) -> object:
    """ISPyB writes 'P 41 21 2' and '78 78 37 90 90 90'; xia2 takes the spaceless forms."""
    if isinstance(value, str) and key == "spacegroup":
        return re.sub(r"\s+", "", value)
    if isinstance(value, str) and key == "unit_cell":
        return re.sub(r"[\s,]+", ",", value.strip())
    return value


class Xia2Wrapper(Wrapper):
    name = "xia2"
    description = "xia2 data reduction, run as python-dlstbx runs it."

    @property
    def settings(self) -> dict[str, Any]:
        return settings_dict(self.params, "xia2")

    def program_name(self) -> str:
        pipeline = self.settings.get("pipeline")
        if pipeline in (None, ""):
            return "xia2"
        if not isinstance(pipeline, str) or not PIPELINE.fullmatch(pipeline):
            raise WrapperError(f"job_parameters.xia2.pipeline {pipeline!r} is not a pipeline name")
        return f"xia2-{pipeline}"

    def working_directory(self) -> Path:
        return super().working_directory() / self.program_name()

    def command(self, workdir: Path) -> list[str]:  # noqa: ARG002 - the tool runs in it
        argv = ["xia2"]
        where = "job_parameters.xia2"
        for key, values in self.settings.items():
            if key == "images":
                argv += [phil_assignment("image", v, where) for v in self._images(values)]
                continue
            for value in values if isinstance(values, list) else [values]:
                argv.append(phil_assignment(key, value, where))
        ispyb = settings_dict(self.params, "ispyb_parameters")
        if not any(k == "nproc" or k.endswith(".nproc") for k in [*self.settings, *ispyb]):
            argv.append(f"nproc={self.context.cpus}")
        for key, value in ispyb.items():
            name = ISPYB_NAMES.get(key, key)
            argv.append(phil_assignment(name, _ispyb_value(key, value), "ispyb_parameters"))
        return argv

    @staticmethod
    def _images(value: object) -> list[str]:
        if not isinstance(value, str):
            raise WrapperError("job_parameters.xia2.images must be a comma-separated string")
        entries = value.split(",") if value else []
        for index, entry in enumerate(entries):
            if not entry:
                raise WrapperError(f"job_parameters.xia2.images entry {index + 1} is empty")
        return entries

    def collect(self, workdir: Path, exit_code: int) -> Outcome:
        problem = self.problem(workdir, exit_code)
        published = self.publish(workdir)
        files = result_files(published)
        if problem:
            return Outcome(False, problem, files)
        try:
            summary = read_summary(workdir / "xia2.json")
        except (OSError, ValueError) as exc:
            return Outcome(False, f"xia2 exited 0 but {exc}", files)
        scaled = scaled_file(published / "DataFiles")
        if scaled is not None:
            summary[SCALED_MTZ_KEY] = str(scaled)
        else:
            self.context.log.warning("xia2 succeeded but DataFiles has no scaled MTZ file")
        summary["output_directory"] = str(published)
        return Outcome(True, files=files, summary=summary)

    @staticmethod
    def problem(workdir: Path, exit_code: int) -> str:
        """Why this run is a failure, or "" when it met every success criterion."""
        for name in ERROR_FILES:
            if (workdir / name).is_file():
                text = (workdir / name).read_text(errors="replace").strip()
                return f"xia2 failed (exit code {exit_code}), {name}: {text[-2000:]}"
        if exit_code != 0:
            return f"xia2 exited with code {exit_code}"
        missing = [
            name
            for name, present in (
                ("xia2.json", (workdir / "xia2.json").is_file()),
                ("DataFiles/", (workdir / "DataFiles").is_dir()),
                ("LogFiles/", (workdir / "LogFiles").is_dir()),
            )
            if not present
        ]
        return f"xia2 exited 0 but left no {', '.join(missing)}" if missing else ""

    def publish(self, workdir: Path) -> Path:
        """Copy results to <results_directory>/<program_name>, as dlstbx's report does."""
        given = self.params.get("results_directory")
        if not given:
            return workdir
        if not isinstance(given, str):
            raise WrapperError("job_parameters.results_directory must be a path")
        target = self.confine(Path(given) / workdir.name, "job_parameters.results_directory")
        if target.resolve() == workdir.resolve():  # results kept where xia2 ran: nothing to copy
            return workdir
        target.mkdir(parents=True, exist_ok=True)
        for subdir in ("DataFiles", "LogFiles"):
            if (workdir / subdir).is_dir():
                shutil.copytree(workdir / subdir, target / subdir, dirs_exist_ok=True)
        for path in workdir.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.suffix != ".sif":
                shutil.copy(path, target)
        return target


def result_files(directory: Path) -> list[ResultFile]:
    """Files and their types/ranks as dlstbx reports them (file_path is the directory)."""
    files = [
        ResultFile(str(directory), name, "log", 1 if name == "xia2.html" else 2)
        for name in TOP_LEVEL_LOGS
        if (directory / name).is_file()
    ]
    for path in _files_in(directory / "DataFiles"):
        kind = "log" if path.suffix in (".log", ".txt") else "result"
        rank = 1 if path.name.endswith("_free.mtz") else 2
        files.append(ResultFile(str(path.parent), path.name, kind, rank))
    for path in _files_in(directory / "LogFiles"):
        kind = "graph" if path.suffix == ".json" else "log"
        files.append(ResultFile(str(path.parent), path.name, kind, 2))
    return files


def _files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def scaled_file(datafiles: Path) -> Path | None:
    for pattern in ("*_free.mtz", "*scaled.mtz"):
        found = sorted(datafiles.glob(pattern))
        if found:
            return found[0]
    return None


def read_summary(xia2_json: Path) -> dict[str, Any]:
    """Space group, cell and overall/outer-shell statistics from xia2.json (see module doc)."""
    try:
        data = json.loads(xia2_json.read_text())
        crystal = next(iter(data["_crystals"].values()))
        scaler = crystal["_scaler"]
        statistics = next(iter(scaler["_scalr_statistics"].values()))
        shells: dict[str, dict[str, float]] = {"overall": {}, "outer_shell": {}}
        for key, name in STATISTICS.items():
            if name in statistics:
                shells["overall"][key] = float(statistics[name][0])
                shells["outer_shell"][key] = float(statistics[name][-1])
        return {
            "space_group": str(scaler["_scalr_likely_spacegroups"][0]),
            "unit_cell": [float(v) for v in scaler["_scalr_cell"]],
            "d_min": shells["overall"].get("d_min"),
            **shells,
        }
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration, ValueError) as exc:
        # A truncated or foreign xia2.json: say which part was missing, not a traceback.
        raise ValueError(f"{xia2_json.name} is unreadable ({type(exc).__name__}: {exc})") from None
