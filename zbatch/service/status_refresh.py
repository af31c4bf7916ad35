"""Ask the clusters about tracked jobs: `zbatch status`, `zbatch submit --wait`, `zbatch cancel`.

A ledger entry names the profile file it was submitted with; that profile's cluster is the one
to ask, once per profile for all of its entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from zbatch.clusters import cluster_for
from zbatch.clusters.base import Cluster
from zbatch.errors import RestartNeeded, ZbatchError
from zbatch.model.profiles import Profile, load_profile_file
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.outcome import Why, why
from zbatch.service.tracker import Tracker, cancel_jobs


def by_profile(entries: Iterable[LedgerEntry]) -> dict[str, list[LedgerEntry]]:
    """Entries grouped by the profile file they were submitted with."""
    groups: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        groups[entry.profile_source].append(entry)
    return groups


def current(ledger: Ledger, entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """The entries as the ledger has them now."""
    return [ledger.get(e.key) or e for e in entries]


def refresh(
    ledger: Ledger, entries: list[LedgerEntry], warn: Callable[[str], None]
) -> list[LedgerEntry]:
    """Poll once the clusters of the active entries; return all entries as now recorded.

    A profile or cluster that cannot be used is reported through `warn`, and its entries stay
    as last recorded: the others are still refreshed.
    """
    for source, group in by_profile(e for e in entries if e.active).items():
        try:
            profile = load_profile_file(source)
            cluster = cluster_for(profile)
            try:
                recipe_ids = {e.recipe_id for e in group}
                Tracker(cluster, ledger, profile.name, recipe_ids=recipe_ids).poll_once()
            finally:
                cluster.close()
        except RestartNeeded:
            raise  # the command starts again with what libdrmaa needs; polling twice is harmless
        except ZbatchError as exc:
            warn(str(exc))
    return current(ledger, entries)


def wait_for(
    cluster: Cluster, ledger: Ledger, profile: Profile, entries: list[LedgerEntry]
) -> list[LedgerEntry]:
    """Poll at the profile's interval until the entries' recipes have no active job left;
    return the entries as they ended."""
    tracker = Tracker(
        cluster,
        ledger,
        profile.name,
        interval_s=profile.poll_interval_s,
        recipe_ids={e.recipe_id for e in entries},
    )
    tracker.wait()
    return current(ledger, entries)


def cancel(
    ledger: Ledger, entries: list[LedgerEntry], cancelled: Callable[[LedgerEntry], None]
) -> None:
    """Cancel the entries' jobs through their clusters; `cancelled` hears of each entry once
    its cluster has taken the request."""
    for source, group in by_profile(entries).items():
        cluster = cluster_for(load_profile_file(source))
        try:
            cancel_jobs(cluster, ledger, group)
        finally:
            cluster.close()
        for entry in group:
            cancelled(entry)


@contextmanager
def cluster_of(profile_source: str) -> Iterator[Cluster]:
    """The cluster of the profile file an entry was submitted with, closed after use."""
    cluster = cluster_for(load_profile_file(profile_source))
    try:
        yield cluster
    finally:
        cluster.close()


def explain(entries: Iterable[LedgerEntry], warn: Callable[[str], None]) -> dict[str, Why]:
    """Why each entry's job ended as it did (outcome.why), by step key, read through its
    cluster; a cluster that cannot be reached is reported through `warn`, its entries left
    out."""
    found: dict[str, Why] = {}
    for source, group in by_profile(entries).items():
        try:
            with cluster_of(source) as cluster:
                for entry in group:
                    found[entry.key] = why(entry, cluster)
        except ZbatchError as exc:
            warn(f"cannot read why {len(group)} job(s) ended: {exc}")
    return found
