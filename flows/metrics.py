"""`backstop metrics`: what a store holds, as Prometheus metrics.

Read from the manifests alone (never a data file), one manifest at a time, each folded
into a few figures per technology and source before the next is read: memory grows with
the number of sources and backup folders, not with their files. Needs no Prefect
(nothing here imports it), so node_exporter's textfile collector or a scrape works on a
host with only the store in reach.

    backstop_backup_last_success_timestamp_seconds{technology,source}
    backstop_backup_last_size_bytes{technology,source}
    backstop_backup_last_records{technology,source}
    backstop_backup_last_duration_seconds{technology,source}
    backstop_backups_total{technology,source,status}      completed | quality_failed
    backstop_drill_last_success_timestamp_seconds{technology,source}
    backstop_store_incomplete_backups{technology}
    backstop_store_unreadable_manifests{technology}
    backstop_store_up

`source` is a backup's sources, redacted and comma-joined (a datastore's shards are one
source: no per-shard label). The backup_* figures are of ordinary (scheduled and ad hoc)
backups: a safety backup's sources are a restore's targets and a drill's backup is the
drill's own. backups_total counts the backups the store holds now, so it falls when
prune deletes some (a gauge despite its name).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.drivers.redact import mask_secrets, redact_url
from backstop.tasks.leases import fresh_leases
from backstop.tasks.manifest import Manifest, Role
from backstop.tasks.store import ArtifactStore, StoreSpec, newest_key

SCRAPE_CACHE_S = 10.0  # Prometheus scrapes every 15-60 s; two scrapers share one read
STATUSES = ("completed", "quality_failed")

SourceKey = tuple[str, str]  # (technology, redacted sources)


@dataclass
class LastBackup:
    """The figures of a source's newest ordinary backup that passed its checks."""

    order: tuple
    finished_at: float
    bytes: int
    records: int
    duration_s: float


@dataclass
class StoreFigures:
    last: dict[SourceKey, LastBackup] = field(default_factory=dict)
    counts: dict[SourceKey, Counter[str]] = field(default_factory=dict)
    drills: dict[SourceKey, float] = field(default_factory=dict)
    incomplete: Counter[str] = field(default_factory=Counter)
    unreadable: Counter[str] = field(default_factory=Counter)
    technologies: set[str] = field(default_factory=set)


def source_label(manifest: Manifest) -> str:
    # Manifests hold redacted URLs; redacted again in case an old one did not.
    return ",".join(redact_url(s) for s in manifest.sources)


def read_store_figures(store: ArtifactStore, now: datetime | None = None) -> StoreFigures:
    """One pass over the store's folders: each manifest read, folded in, dropped."""
    now = now or datetime.now(UTC)
    figures = StoreFigures()
    for folder in store.folders():
        tech = folder.technology
        figures.technologies.add(tech)
        if not folder.complete:
            # A backup still being written holds a fresh lease: in progress, not left over.
            if not fresh_leases(store, tech, folder.backup_id, now):
                figures.incomplete[tech] += 1
            continue
        try:
            manifest = store.read_manifest(tech, folder.backup_id)
        except BadInputError:  # pruned since the listing
            continue
        except BackstopError:  # IntegrityError: a manifest that cannot be read
            figures.unreadable[tech] += 1
            continue
        _fold(store, figures, manifest)
    return figures


def _fold(store: ArtifactStore, figures: StoreFigures, manifest: Manifest) -> None:
    key = (manifest.technology, source_label(manifest))
    if manifest.role is Role.DRILL:
        record = store.read_drill_record(manifest.technology, manifest.backup_id)
        passed_at = _timestamp(record.get("passed_at")) if record else None
        if passed_at is not None:
            figures.drills[key] = max(passed_at, figures.drills.get(key, 0.0))
        return
    if not manifest.ordinary:
        return
    status = "completed" if manifest.quality.status == "passed" else "quality_failed"
    figures.counts.setdefault(key, Counter())[status] += 1
    if status != "completed":
        return
    order = newest_key(manifest)
    known = figures.last.get(key)
    if known is None or order > known.order:
        figures.last[key] = LastBackup(
            order=order,
            finished_at=manifest.finished_at.timestamp(),
            bytes=manifest.totals.bytes,
            records=manifest.totals.records,
            duration_s=manifest.duration_s,
        )


def _timestamp(value: object) -> float | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def metric_families(figures: StoreFigures | None) -> list[GaugeMetricFamily]:
    """The exposition of `figures`; None: the store could not be read (up 0)."""
    up = GaugeMetricFamily("backstop_store_up", "1 when the last read of the store succeeded")
    up.add_metric([], 0.0 if figures is None else 1.0)
    if figures is None:
        return [up]
    labels = ["technology", "source"]
    last = {
        "timestamp": GaugeMetricFamily(
            "backstop_backup_last_success_timestamp_seconds",
            "When the newest complete, validated ordinary backup of a source finished",
            labels=labels,
        ),
        "bytes": GaugeMetricFamily(
            "backstop_backup_last_size_bytes",
            "Bytes stored by the newest successful backup of a source",
            labels=labels,
        ),
        "records": GaugeMetricFamily(
            "backstop_backup_last_records",
            "Records in the newest successful backup of a source",
            labels=labels,
        ),
        "duration": GaugeMetricFamily(
            "backstop_backup_last_duration_seconds",
            "Seconds the newest successful backup of a source took (start to manifest)",
            labels=labels,
        ),
    }
    for (tech, source), backup in sorted(figures.last.items()):
        last["timestamp"].add_metric([tech, source], backup.finished_at)
        last["bytes"].add_metric([tech, source], backup.bytes)
        last["records"].add_metric([tech, source], backup.records)
        last["duration"].add_metric([tech, source], backup.duration_s)
    totals = GaugeMetricFamily(
        "backstop_backups_total",
        "Complete ordinary backups of a source the store holds, by status "
        "(completed, or quality_failed: kept but refused by restore without --force)",
        labels=[*labels, "status"],
    )
    for (tech, source), counts in sorted(figures.counts.items()):
        for status in STATUSES:
            totals.add_metric([tech, source, status], counts[status])
    drills = GaugeMetricFamily(
        "backstop_drill_last_success_timestamp_seconds",
        "When the newest drill of a source passed (restored and verified equal)",
        labels=labels,
    )
    for (tech, source), passed_at in sorted(figures.drills.items()):
        drills.add_metric([tech, source], passed_at)
    incomplete = GaugeMetricFamily(
        "backstop_store_incomplete_backups",
        "Backup folders without a manifest and without a running backup's lease "
        "(left by a crash or a kill; prune removes them)",
        labels=["technology"],
    )
    unreadable = GaugeMetricFamily(
        "backstop_store_unreadable_manifests",
        "Backup folders whose manifest cannot be read",
        labels=["technology"],
    )
    for tech in sorted(figures.technologies):
        incomplete.add_metric([tech], figures.incomplete[tech])
        unreadable.add_metric([tech], figures.unreadable[tech])
    return [up, *last.values(), totals, drills, incomplete, unreadable]


class StoreCollector(Collector):
    """Re-reads the store on a scrape, at most once every `cache_s` seconds."""

    def __init__(self, spec: StoreSpec, cache_s: float = SCRAPE_CACHE_S) -> None:
        self.spec, self.cache_s = spec, cache_s
        self._lock = threading.Lock()  # one read at a time; the others wait for it
        self._read_at = -float("inf")
        self._families: list[GaugeMetricFamily] = []

    def describe(self) -> list:
        return []  # registering must not read the store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_s:
                self._families = metric_families(self._read())
                self._read_at = time.monotonic()
            families = self._families
        yield from families

    def _read(self) -> StoreFigures | None:
        try:
            return read_store_figures(self.spec.open())
        except (BackstopError, OSError) as exc:  # said on stderr, exposed as up 0
            print(f"backstop metrics: cannot read the store: {mask_secrets(str(exc))}",
                  file=sys.stderr)  # fmt: skip
            return None


def exposition(spec: StoreSpec) -> bytes:
    """The text exposition of the store, read now; a store that cannot be read raises."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneRead(read_store_figures(spec.open())))
    return generate_latest(registry)


class _OneRead(Collector):
    def __init__(self, figures: StoreFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from metric_families(self.figures)


def write_atomically(path: str, data: bytes) -> None:
    """node_exporter's textfile collector may read the file at any moment: a temporary
    file in the same folder, renamed over it, so a reader sees the old or the new whole.
    Readable by all (0644): the collector runs as another user, and the file holds
    redacted URLs and figures only."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT); exit 2 on anything else."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def check_local_store(url: str) -> None:
    """A local store must exist: opening one makes its folder, and metrics of a mistyped
    path would be an empty store, with no series for the staleness alerts to fire on."""
    from backstop.tasks.secrets import block_name

    scheme, sep, rest = url.partition("://")
    if "${" in url or (sep and scheme != "file") or block_name(url) is not None:
        return  # a reference, an object store or a block: read when the metrics are
    folder = rest if sep else url
    if not Path(folder).is_dir():
        raise BadInputError(f"--store {url!r}: no such folder (metrics read an existing store)")


def check_output(path: str) -> None:
    """A file in an existing folder (the textfile collector's), or exit 2."""
    folder = Path(path).parent
    if Path(path).is_dir():
        raise BadInputError(f"--output {path!r} is a folder; give a file name (e.g. backstop.prom)")
    if not folder.is_dir():
        raise BadInputError(f"--output {path!r}: folder {str(folder)!r} does not exist")


def serve(spec: StoreSpec, listen: str) -> None:
    """Serve /metrics until interrupted (SIGTERM/SIGINT: a clean stop)."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(spec))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise BadInputError(
            f"--listen {listen}: cannot listen there: {exc.strerror or exc}"
        ) from None
    print(f"backstop metrics: serving http://{listen}/metrics for {spec.display()}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:  # how the CLI's signal handling stops a server: cleanly
        pass
    finally:
        server.shutdown()
        server.server_close()
