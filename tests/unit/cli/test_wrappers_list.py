"""`zbatch wrappers list` loads every registered wrapper: a description for each that loads,
the error for each that does not, and the others still listed.

The broken wrappers come from a distribution made by hand (a `.dist-info` folder with an
`entry_points.txt`) in a folder on PYTHONPATH, where importlib.metadata finds it: nothing is
installed into the shared venv.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ZbatchRun

ENTRY_POINTS = """\
[zbatch.wrappers]
spotfinder = listing_demo:SpotFinder
needs_numpy9 = listing_needs:Tool
not_a_class = json:dumps
gone = listing_gone_module:Tool
"""

GOOD = '''\
from zbatch.wrapper import Wrapper


class SpotFinder(Wrapper):
    """Find spots on images.

    The rest of the docstring is not shown.
    """

    name = "spotfinder"

    def command(self, workdir):
        return ["true"]

    def collect(self, workdir, exit_code):
        raise NotImplementedError
'''


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    info = site / "listing_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: listing-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "listing_demo.py").write_text(GOOD)
    (site / "listing_needs.py").write_text("import numpy9_not_installed\n")
    return site


def test_broken_wrappers_are_listed_with_their_errors(zbatch: ZbatchRun, site: Path) -> None:
    done = zbatch("wrappers", "list", env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert lines["spotfinder"].split(None, 1)[1] == (
        "Find spots on images.  [listing_demo:SpotFinder]"
    )
    assert "xia2 data reduction, run as python-dlstbx runs it." in lines["xia2"]
    needs, gone, not_a_class = lines["needs_numpy9"], lines["gone"], lines["not_a_class"]
    assert "BROKEN: wrapper 'needs_numpy9' cannot be loaded: ModuleNotFoundError: " in needs
    assert "numpy9_not_installed" in needs
    assert "BROKEN: wrapper 'gone' cannot be loaded" in gone
    assert "BROKEN: wrapper 'not_a_class' (json:dumps) is not a zbatch Wrapper" in not_a_class
    assert sorted(lines) == ["fast_ep", "generic", "gone", "needs_numpy9", "not_a_class",
                             "spotfinder", "xia2"]  # fmt: skip


def test_the_json_form_has_a_schema_and_every_wrapper(zbatch: ZbatchRun, site: Path) -> None:
    done = zbatch("wrappers", "list", "--json", env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["schema"] == "zbatch.wrappers/1"
    by_name = {w["name"]: w for w in data["wrappers"]}
    assert by_name["spotfinder"] == {
        "name": "spotfinder",
        "target": "listing_demo:SpotFinder",
        "loads": True,
        "description": "Find spots on images.",
        "error": None,
    }
    assert by_name["gone"]["loads"] is False
    assert "listing_gone_module" in by_name["gone"]["error"]
    assert {name for name, w in by_name.items() if w["loads"]} == {
        "fast_ep", "generic", "spotfinder", "xia2"
    }  # fmt: skip
    assert all(by_name[n]["description"] for n in ("fast_ep", "generic", "xia2"))
