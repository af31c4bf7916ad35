"""Run any program from an argument list in `job_parameters`, without a shell.

    "job_parameters": {"command": ["dials.import", "{payload[template]}"],
                       "result_files": ["*.expt"]}

`{payload[...]}` placeholders are filled from the message payload (the previous step's
result) when the job runs; each placeholder fills exactly one argument, whatever it contains.
"""

from __future__ import annotations

import os
from pathlib import Path

from zbatch.errors import WrapperError
from zbatch.model import safety
from zbatch.model.recipe import substitute
from zbatch.wrapper import Outcome, ResultFile, Wrapper, check_argument


class GenericWrapper(Wrapper):
    name = "generic"
    description = "Any program named in job_parameters.command, run without a shell."

    def command(self, workdir: Path) -> list[str]:  # noqa: ARG002 - the tool runs in it
        # This runs whatever program the message names, so it is as powerful as a recipe's
        # shell commands. The job cannot know its site profile (the message does not carry
        # it and must not be trusted to), so the gate is at submission: zbatch.prepare.job_files
        # refuses `generic` on profiles without `allow_commands` (ANY_PROGRAM_WRAPPERS) or
        # whose `wrappers:` list leaves it out. A job running it has passed that gate.
        argv = self.params.get("command")
        if not isinstance(argv, list) or not argv:
            raise WrapperError("job_parameters.command must be a non-empty list of arguments")
        filled = substitute(argv, {"payload": self.context.message.payload})
        return [check_argument(arg, f"job_parameters.command[{i}]") for i, arg in enumerate(filled)]

    def result_patterns(self) -> list[str]:
        """`job_parameters.result_files`: glob patterns relative to the working directory."""
        patterns = self.params.get("result_files", [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise WrapperError("job_parameters.result_files must be a list of glob patterns")
        for index, pattern in enumerate(patterns):
            what = f"job_parameters.result_files[{index}]"
            if not check_argument(pattern, what):
                raise WrapperError(f"{what} is empty: give a glob pattern such as '*.txt'")
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise WrapperError(
                    f"{what} {pattern[:80]!r} must be relative to the working directory, "
                    "without '..'"
                )
        return patterns

    def result_files(self, workdir: Path) -> list[ResultFile]:
        """Files matching the patterns whose real path lies inside the profile's root (the
        working directory without one): a link to a file elsewhere is skipped and logged."""
        limit = os.path.realpath(self.context.workdir_root or workdir)
        files = []
        for index, pattern in enumerate(self.result_patterns()):
            try:
                matches = sorted(workdir.glob(pattern))
            except (ValueError, NotImplementedError) as exc:  # e.g. "**" inside a component
                raise WrapperError(f"job_parameters.result_files[{index}]: {exc}") from None
            for path in matches:
                real = os.path.realpath(path)
                if not safety.is_within(real, limit):
                    self.context.log.warning(
                        "result file %s resolves to %s, outside %s: not reported", path, real, limit
                    )
                elif os.path.isfile(real):
                    files.append(ResultFile(str(path.parent), path.name, "result"))
        return files

    def collect(self, workdir: Path, exit_code: int) -> Outcome:
        files = self.result_files(workdir)
        if exit_code != 0:
            return Outcome(False, f"{self.command(workdir)[0]} exited with code {exit_code}", files)
        return Outcome(True, files=files)
