"""fast_ep (fast SAD phasing), run as python-dlstbx's fast_ep wrapper runs it.

Command: `fast_ep`, then `key=value` for each truthy item of `job_parameters.fast_ep`
(`rlims`, a list, joined with commas), `data=` and `cpu=<allocated cpus>` unless given.
`data` is, first found: the previous step's `scaled_mtz` (what the xia2 wrapper sends on
success), `job_parameters.ispyb_parameters.data`, `job_parameters.fast_ep.data`.
The tool runs in `<working_directory>/<create_symlink or "fast_ep">`.

Success: exit 0, no `fast_ep.error`, and a readable `fast_ep_data.json` (`_spacegroup[0]`,
`solv`) plus the "Unit cell:" line of `fast_ep.log`; these feed the `topaz` output (the hand
determination service's input) and the summary.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from zbatch.errors import WrapperError
from zbatch.wrapper import Outcome, ResultFile, Wrapper
from zbatch_wrappers.xia2 import SCALED_MTZ_KEY, phil_assignment, phil_value, settings_dict

DIRECTORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
# Result types by suffix as dlstbx reports them; None: skipped; "": copied, not reported.
SUFFIX_TYPES: dict[str, str | None] = {
    ".cif": "result",
    ".error": "log",
    ".hkl": "result",
    ".html": "log",
    ".ins": "result",
    ".json": "result",
    ".lst": "log",
    ".mtz": "result",
    ".pdb": "result",
    ".png": None,
    ".sca": "result",
    ".sh": None,
    ".xml": "",
}
NAME_TYPES = {"fast_ep.log": "log", "shelxc.log": "log"}


class FastEpWrapper(Wrapper):
    name = "fast_ep"
    description = "fast_ep SAD phasing, run as python-dlstbx runs it."

    def program_name(self) -> str:
        given = self.params.get("create_symlink") or "fast_ep"
        if not isinstance(given, str) or not DIRECTORY.fullmatch(given):
            raise WrapperError(f"job_parameters.create_symlink {given!r} is not a directory name")
        return given

    def working_directory(self) -> Path:
        return super().working_directory() / self.program_name()

    def input_data(self) -> object:
        payload = self.context.message.payload
        if isinstance(payload, dict) and payload.get(SCALED_MTZ_KEY):
            return payload[SCALED_MTZ_KEY]
        found = settings_dict(self.params, "ispyb_parameters").get("data")
        found = found or settings_dict(self.params, "fast_ep").get("data")
        if not found:
            raise WrapperError(
                f"fast_ep has no input: the previous step sent no {SCALED_MTZ_KEY!r} and neither "
                "job_parameters.ispyb_parameters.data nor job_parameters.fast_ep.data is set"
            )
        return found

    def command(self, workdir: Path) -> list[str]:  # noqa: ARG002 - the tool runs in it
        # Assigning keeps a given `data` in its place, as dlstbx's dict update does.
        settings = {**settings_dict(self.params, "fast_ep"), "data": self.input_data()}
        settings.setdefault("cpu", self.context.cpus)
        argv = ["fast_ep"]
        for key, value in settings.items():
            if not value:
                continue
            if key == "rlims" and isinstance(value, list):
                value = ",".join(
                    phil_value(v, f"job_parameters.fast_ep.rlims[{i}]") for i, v in enumerate(value)
                )
            argv.append(phil_assignment(key, value, "job_parameters.fast_ep"))
        return argv

    def collect(self, workdir: Path, exit_code: int) -> Outcome:
        files = self.publish(workdir)
        if (workdir / "fast_ep.error").is_file():
            text = (workdir / "fast_ep.error").read_text(errors="replace").strip()
            return Outcome(False, f"fast_ep failed (exit code {exit_code}): {text[-2000:]}", files)
        if exit_code != 0:
            return Outcome(False, f"fast_ep exited with code {exit_code}", files)
        try:
            topaz = read_topaz(workdir)
        except (OSError, ValueError) as exc:
            return Outcome(False, f"fast_ep exited 0 but {exc}", files)
        summary = {
            "space_group": topaz["space_group"],
            "best_solvent": topaz["best_solvent"],
            "unit_cell": list(topaz["cell_info"]),
            "phasing_directory": str(workdir / topaz["best_solvent"]),
        }
        return Outcome(True, files=files, summary=summary, extra_outputs={"topaz": topaz})

    def publish(self, workdir: Path) -> list[ResultFile]:
        """Copy result files to <results_directory>/<program_name> when set; report by type."""
        given = self.params.get("results_directory")
        if given is not None and not isinstance(given, str):
            raise WrapperError("job_parameters.results_directory must be a path")
        target = (
            self.confine(Path(given) / workdir.name, "job_parameters.results_directory")
            if given
            else workdir
        )
        target.mkdir(parents=True, exist_ok=True)
        files: list[ResultFile] = []
        for path in sorted(p for p in workdir.iterdir() if p.is_file()):
            kind = NAME_TYPES.get(path.name, SUFFIX_TYPES.get(path.suffix))
            if kind is None:
                continue
            if target.resolve() != workdir.resolve():
                shutil.copy(path, target / path.name)
            if kind:
                files.append(ResultFile(str(target), path.name, kind))
        return files


def read_topaz(workdir: Path) -> dict[str, Any]:
    """The topaz message: best solvent's phase/reflection files, space group and cell."""
    data_json = workdir / "fast_ep_data.json"
    if not data_json.is_file():
        raise ValueError(f"left no {data_json.name}")
    try:
        data = json.loads(data_json.read_text())
        space_group = str(data["_spacegroup"][0])
        solvent = f"{float(data['solv']):.2f}"
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{data_json.name} is unreadable ({type(exc).__name__}: {exc})") from None
    cell = unit_cell(workdir / "fast_ep.log")
    best = workdir / solvent
    return {
        "original_phase_file": str(best / "sad.phs"),
        "inverse_phase_file": str(best / "sad_i.phs"),
        "hkl_file": str(best / "sad.hkl"),
        "fa_file": str(best / "sad_fa.hkl"),
        "res_file": str(best / "sad_fa.res"),
        "space_group": space_group,
        "cell_info": cell,
        "best_solvent": solvent,
    }


def unit_cell(log: Path) -> list[float]:
    with open(log, errors="replace") as handle:
        for line in handle:
            if "Unit cell:" in line:
                try:
                    return [float(v) for v in line.split()[2:]]
                except ValueError:
                    raise ValueError(f"{log.name} has a malformed line {line.strip()!r}") from None
    raise ValueError(f"{log.name} has no 'Unit cell:' line")
