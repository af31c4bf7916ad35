"""Fixtures of the hostile corpus: a scratch world with a workdir_root, a victim folder
outside it, planted symlinks, canaries, test profiles; and the corpus' session summary."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.hostile import corpus_checks
from tests.hostile.corpus_cases import Case, Markers, ProfileFacts, all_cases, recipe_text
from tests.hostile.corpus_checks import REPO, CliOutcome, run_inprocess, shipped_profiles


@dataclass(frozen=True)
class Target:
    """A profile the corpus renders with."""

    name: str
    path: Path
    facts: ProfileFacts
    root: str  # the folder @@root@@ stands for


@dataclass(repr=False)
class HostileWorld:
    base: Path
    work: Path
    outside: Path
    canaries: Path
    world_writable: Path
    localbatch: Path
    targets: list[Target] = field(default_factory=list)
    profiles: dict[str, Path] = field(default_factory=dict)
    _baselines: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"HostileWorld({self.base})"

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:  # hypothesis' reports
        printer.text(repr(self))

    # --- places -------------------------------------------------------------------------
    def outside_for(self, slug: str) -> Path:
        """A victim folder outside every workdir_root: a file to overwrite, tools to hijack."""
        path = self.outside / slug
        if path.is_dir():
            return path
        (path / "bin").mkdir(parents=True)
        (path / "py").mkdir()
        victim = path / "victim"
        victim.write_text("original\n")
        victim.chmod(0o600)
        canary = self.canaries / f"{slug}.hijack"
        for tool in ("xia2", "fast_ep", "date", "mv", "sh", "bash", "python3"):
            script = path / "bin" / tool
            script.write_text(f"#!/bin/sh\ntouch {canary}-{tool}\n")
            script.chmod(0o755)
        (path / "py" / "sitecustomize.py").write_text(f"open({str(canary) + '-python'!r}, 'w')\n")
        (path / "bashenv.sh").write_text(f"touch {canary}-bashenv\n")
        (path / "zocalo.yml").write_text("plugins: {}\n")
        return path

    def case_root(self, mode: str, case: Case) -> Path:
        """A fresh folder inside the workdir_root, with symlinks leading out of it."""
        root = self.work / f"{mode}-{case.slug}"
        root.mkdir(parents=True, exist_ok=True)
        plant(root, self.outside_for(case.slug))
        return root

    def canary(self, prefix: str, case: Case) -> str:
        return str(self.canaries / f"{case.slug}.{prefix}")

    def canaries_of(self, case: Case) -> list[str]:
        return sorted(p.name for p in self.canaries.glob(f"{case.slug}.*"))

    def render_markers(self, target: Target, case: Case) -> Markers:
        return Markers(
            root=target.root,
            outside=RENDER_OUTSIDE,
            canary=self.canary("render", case),
            world_writable=str(self.world_writable),
        )

    # --- baselines -----------------------------------------------------------------------
    def baseline(self, target: Target, base: str, root: str | None = None) -> str | None:
        """The known-good step of `base` rendered with `target` (None if it does not render)."""
        key = (f"{target.name}@{root or target.root}", base)
        if key not in self._baselines:
            good = Case(id=f"baseline.{base}", kind="step", base=base)
            markers = Markers(root or target.root, str(self.outside), "/nonexistent-canary")
            path = self.base / f"baseline-{target.name}-{base}-{len(self._baselines)}.json"
            path.write_text(recipe_text(good, markers))
            outcome = run_inprocess(
                ["render", "--profile", str(target.path), "--recipe", str(path)]
            )
            self._baselines[key] = outcome.stdout if outcome.exit_code == 0 else None
        return self._baselines[key]


# Rendering writes nothing: @@outside@@ may name a folder outside every workdir_root (the
# shipped profiles' root is /tmp, where pytest's scratch folders live too).
RENDER_OUTSIDE = "/nonexistent-zbatch-hostile-outside"


def plant(root: Path, outside: Path) -> None:
    """Symlinks inside `root` that lead out of it."""
    escape = root / "escape"
    if not escape.is_symlink():
        escape.symlink_to(outside)
    planted = root / "planted"
    planted.mkdir(exist_ok=True)
    link = planted / "link.json"
    if not link.is_symlink():
        link.symlink_to(outside / "victim")


def facts(path: Path, planted: bool = True) -> ProfileFacts:
    data = yaml.safe_load(path.read_text())
    return ProfileFacts(
        name=str(data["name"]),
        scheduler=str(data["scheduler"]),
        rooted=bool(data.get("workdir_root")),
        allow_commands=bool(data.get("allow_commands", False)),
        planted=planted and bool(data.get("workdir_root")),
    )


def write_profile(directory: Path, name: str, world: HostileWorld, **fields: Any) -> Path:
    data: dict[str, Any] = {
        "name": name,
        "scheduler": "local",
        "workdir_root": str(world.work),
        "local": {"slots": 2, "state_dir": str(world.localbatch)},
        "allow_commands": False,
        # The job runs this checkout's zbatch, whatever is installed.
        "zbatch_command": ["/usr/bin/env", f"PYTHONPATH={REPO}", sys.executable, "-m", "zbatch"],
        "defaults": {"cpus": 1, "time_limit": "0:10:00"},
        "limits": {"max_cpus": 4, "max_time_limit": "24:00:00"},
    }
    data.update(fields)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileWorld]:
    base = tmp_path_factory.mktemp("hostile")
    world = HostileWorld(
        base=base,
        work=base / "work",
        outside=base / "outside",
        canaries=base / "canaries",
        world_writable=base / "world-writable-templates",
        localbatch=base / "localbatch",
    )
    for folder in (world.work, world.outside, world.canaries, world.world_writable):
        folder.mkdir()
    world.world_writable.chmod(0o777)
    world.work.chmod(0o755)
    assert stat.S_IMODE(world.world_writable.stat().st_mode) == 0o777
    profiles = base / "profiles"
    profiles.mkdir()
    world.profiles = {
        "hostile-local": write_profile(profiles, "hostile-local", world),
        "plain": write_profile(profiles, "hostile-run", world),
        "cmd": write_profile(profiles, "hostile-run-cmd", world, allow_commands=True),
        "dispatch": write_profile(profiles, "hostile-dispatch", world),
    }
    render_root = world.work / "render"
    render_root.mkdir()
    plant(render_root, Path(RENDER_OUTSIDE))
    for path in [*shipped_profiles(), world.profiles["hostile-local"]]:
        data = yaml.safe_load(path.read_text())
        root = data.get("workdir_root")
        real = Path(os.path.expanduser(root)).resolve() if root else None
        # @@root@@ is the scratch folder (with its planted symlinks) when it lies inside the
        # profile's root; otherwise a folder named under that root (which may not exist here).
        inside = real is None or render_root.resolve().is_relative_to(real)
        where = str(render_root) if inside else f"{str(real).rstrip('/')}/zbatch-hostile"
        # `render` of an SSH profile does not connect, so it cannot see the host's symlinks.
        remote = (data.get("connection") or {}).get("type") == "ssh"
        info = facts(path, planted=inside and not remote)
        world.targets.append(Target(info.name, path, info, where))
    yield world


# ---------------------------------------------------------------------------------------------
# Session summary


def pytest_terminal_summary(terminalreporter: Any) -> None:
    records = corpus_checks.RECORDS
    if not records:
        return
    write = terminalreporter.write_line
    cases = all_cases()
    write("")
    write("=" * 30 + " hostile corpus " + "=" * 30)
    write(f"corpus: {len(cases)} cases, {len({c.fingerprint() for c in cases})} distinct inputs")
    by_mode: dict[str, Counter[str]] = defaultdict(Counter)
    for rec in records:
        by_mode[rec.mode][rec.verdict] += 1
    total: Counter[str] = Counter()
    for mode, counts in sorted(by_mode.items()):
        total.update(counts)
        write(f"  {mode:<18} " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    write(f"  {'all runs':<18} " + ", ".join(f"{k}: {v}" for k, v in sorted(total.items())))
    case_verdicts: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        case_verdicts[rec.case].add(rec.verdict)
    per_case = Counter(
        "FAILED"
        if "FAILED" in v
        else (
            "clear error"
            if v == {"clear error"}
            else "accepted safely"
            if v == {"accepted safely"}
            else "mixed (error on some profiles, accepted on others)"
        )
        for v in case_verdicts.values()
    )
    write("  cases: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_case.items())))
    groups: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        for problem in rec.problems:
            groups[f"[{rec.mode}] {corpus_checks.cause(problem)}"].add(rec.case)
    if groups:
        write("failing cases by cause:")
        for key, ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = sorted(ids)
            more = f" ... (+{len(shown) - 12})" if len(shown) > 12 else ""
            write(f"  {key} ({len(ids)}): {', '.join(shown[:12])}{more}")
    report = os.environ.get("ZBATCH_HOSTILE_REPORT")
    if report:
        Path(report).write_text(
            json.dumps([rec.__dict__ for rec in records], indent=1, ensure_ascii=True)
        )
        write(f"full report: {report}")


__all__ = ["CliOutcome", "HostileWorld", "Target"]
