"""`backstop metrics --listen`: a scrape costs what changed in the store, not the store.

Manifests never change once written (a backup's manifest is written last and never
rewritten; prune deletes whole folders), so the server keeps what each backup it has read
contributes (a Contribution: a few numbers and its source's label, never the manifest)
and a refresh is: one listing of the technologies, one listing of each technology's
folders, a manifest read for each folder not seen before, and the forgetting of folders
gone from the listing (pruned). What can still change is re-checked on every refresh:
a folder without a manifest (a running backup that may finish, or one left by a crash;
its leases say which), a drill backup without a record of a pass (the drill writes it
after restoring and verifying), and a manifest that could not be read (a store hiccup is
not remembered as a broken manifest).

A refresh runs beside the scrapes: a scrape that finds the figures older than
`cache_s` starts one and waits for it at most `wait_s` (below Prometheus' default 10 s
scrape timeout); a refresh that takes longer (the first read of a large store) finishes
in the background while scrapes get the previous read's exposition, its age in
`backstop_store_read_age_seconds`. Before the first read has finished a scrape gets no
series at all: `absent(backstop_store_up)` fires if that lasts, where `store_up 0`
would claim a store that cannot be read.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.drivers.redact import mask_secrets
from backstop.flows.metrics import (
    Contribution,
    IdentityKey,
    StoreFigures,
    _Source,
    claimed_drill_pass,
    contribution_of,
    fold,
    group_by_label,
    metric_families,
)
from backstop.tasks.leases import fresh_leases
from backstop.tasks.store import ArtifactStore, StoreSpec

SCRAPE_CACHE_S = 10.0  # Prometheus scrapes every 15-60 s; two scrapers share one read
SCRAPE_WAIT_S = 5.0  # a scrape waits this long for a refresh, then gets the previous one

FolderKey = tuple[str, str]  # (technology, backup id)


@dataclass
class _Seen:
    """What a backup folder whose manifest was read contributes."""

    contribution: Contribution | None  # None: a safety backup, or figures not exposable
    unexposable: bool = False
    claimed_pass: float | None = None  # a drill backup's record's pass, once found


class StoreFigureCache:
    """The store's figures, kept between refreshes: only new folders' manifests are read."""

    def __init__(self) -> None:
        self.seen: dict[FolderKey, _Seen] = {}

    def refresh(self, store: ArtifactStore, now: datetime | None = None) -> StoreFigures:
        now = now or datetime.now(UTC)
        listed = store.folder_names()
        for gone in self.seen.keys() - set(listed):  # pruned
            del self.seen[gone]
        figures = StoreFigures()
        sources: dict[IdentityKey, _Source] = {}
        for tech, backup_id in listed:
            figures.technologies.add(tech)
            seen = self.seen.get((tech, backup_id))
            if seen is None:
                try:
                    seen = self._read(store, tech, backup_id)
                except BadInputError:  # no manifest (yet): in progress, or left over
                    # A backup still being written holds a fresh lease.
                    if not fresh_leases(store, tech, backup_id, now):
                        figures.incomplete[tech] += 1
                    continue
                except BackstopError:  # unreadable now; read again next time
                    figures.unreadable[tech] += 1
                    continue
            if seen.unexposable:
                figures.unreadable[tech] += 1
            if seen.contribution is None:
                continue
            if seen.contribution.drill and seen.claimed_pass is None:
                seen.claimed_pass = claimed_drill_pass(store, seen.contribution)
            fold(sources, seen.contribution, seen.claimed_pass, now.timestamp())
        group_by_label(figures, sources)
        return figures

    def _read(self, store: ArtifactStore, tech: str, backup_id: str) -> _Seen:
        manifest = store.read_manifest(tech, backup_id)
        try:
            seen = _Seen(contribution_of(manifest))
        except (ValueError, OverflowError):  # parsed, but its figures cannot be exposed
            seen = _Seen(None, unexposable=True)
        self.seen[(tech, backup_id)] = seen
        return seen


class StoreCollector(Collector):
    """Refreshes the figures on a scrape, at most once every `cache_s` seconds, in one
    long-lived thread (fsspec caches a local filesystem per thread: a thread per refresh
    would keep one more instance every refresh)."""

    def __init__(
        self, spec: StoreSpec, cache_s: float = SCRAPE_CACHE_S, wait_s: float = SCRAPE_WAIT_S
    ) -> None:
        self.spec, self.cache_s, self.wait_s = spec, cache_s, wait_s
        self.cache = StoreFigureCache()
        self._lock = threading.Lock()
        self._refreshed = threading.Condition(self._lock)
        self._wanted = threading.Event()
        self._refresher: threading.Thread | None = None
        self._running = False
        self._refreshes = 0
        self._read_at = -float("inf")  # monotonic, when the last refresh ended
        self._families: list[GaugeMetricFamily] | None = None

    def describe(self) -> list:
        return []  # registering must not read the store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if not self._running and time.monotonic() - self._read_at >= self.cache_s:
                self._start_refresh()
            if self._running:
                done = self._refreshes
                self._refreshed.wait_for(lambda: self._refreshes != done, self.wait_s)
            families, read_at = self._families, self._read_at
        if families is None:
            print("backstop metrics: the first read of the store is still under way",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        yield from families
        age = GaugeMetricFamily(
            "backstop_store_read_age_seconds",
            "Seconds since the figures served were read from the store (a refresh longer "
            "than a scrape serves the previous read's)",
        )
        age.add_metric([], round(time.monotonic() - read_at, 3))
        yield age

    def _start_refresh(self) -> None:
        self._running = True
        self._wanted.set()
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_when_wanted, name="backstop-metrics-refresh", daemon=True
            )
            self._refresher.start()

    def _refresh_when_wanted(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            families = metric_families(self._read())
            with self._lock:
                self._families, self._read_at = families, time.monotonic()
                self._running = False
                self._refreshes += 1
                self._refreshed.notify_all()

    def _read(self) -> StoreFigures | None:
        try:
            return self.cache.refresh(self.spec.open())
        except Exception as exc:  # said on stderr, exposed as up 0 (never a failed scrape,
            # which would leave no backstop series for any alert to fire on)
            shown = exc if isinstance(exc, BackstopError | OSError) else repr(exc)
            print(f"backstop metrics: cannot read the store: {mask_secrets(str(shown))}",
                  file=sys.stderr)  # fmt: skip
            return None
