"""Run any program from an argument list in `job_parameters`, without a shell.

    "job_parameters": {"command": ["dials.import", "{payload[template]}"],
                       "result_files": ["*.expt"]}

`{payload[...]}` placeholders are filled from the message payload (the previous step's
result) when the job runs; each placeholder fills exactly one argument, whatever it contains.
"""

from __future__ import annotations

from pathlib import Path

from zbatch.errors import WrapperError
from zbatch.recipe import substitute
from zbatch.wrapper import Outcome, ResultFile, Wrapper, check_argument


class GenericWrapper(Wrapper):
    name = "generic"

    def command(self, workdir: Path) -> list[str]:
        argv = self.params.get("command")
        if not isinstance(argv, list) or not argv:
            raise WrapperError("job_parameters.command must be a non-empty list of arguments")
        filled = substitute(argv, {"payload": self.context.message.payload})
        return [check_argument(arg, f"job_parameters.command[{i}]") for i, arg in enumerate(filled)]

    def collect(self, workdir: Path, exit_code: int) -> Outcome:
        patterns = self.params.get("result_files", [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise WrapperError("job_parameters.result_files must be a list of glob patterns")
        files = [
            ResultFile(str(path.parent), path.name, "result")
            for pattern in patterns
            for path in sorted(workdir.glob(pattern))
            if path.is_file()
        ]
        if exit_code != 0:
            return Outcome(False, f"{self.command(workdir)[0]} exited with code {exit_code}", files)
        return Outcome(True, files=files)
