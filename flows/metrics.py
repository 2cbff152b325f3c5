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
    backstop_backup_last_quality_failed_timestamp_seconds{technology,source}
    backstop_store_backups{technology,source,status}      completed | quality_failed
    backstop_drill_last_success_timestamp_seconds{technology,source}
    backstop_store_incomplete_backups{technology}
    backstop_store_unreadable_manifests{technology}
    backstop_store_up

`source` is a backup's sources, redacted and comma-joined (a datastore's shards are one
source: no per-shard label). Backups are grouped by their sources' identities (as
`latest` finds them), and a group is labelled with its newest ordinary backup's URLs: a
source reached by a new URL (an alias, an added parameter) is one series, not an old
one left at the age of the old URL's last backup, which prune always keeps. The backup_* figures are of ordinary (scheduled and ad hoc)
backups: a safety backup's sources are a restore's targets and a drill's backup is the
drill's own. store_backups counts the backups the store holds now, so it falls when
prune deletes some (a gauge: no `_total`, which names counters).

A source with backups but none that passed its checks has a last-success timestamp of
0, and a drilled source (one with drill backups) whose drills left no passed record
has a drill timestamp of 0: the staleness alerts fire on them, where a missing series
would keep them quiet. A manifest whose figures cannot be exposed (a size past what a
float holds, a negative count) is counted unreadable, like one that cannot be parsed.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from backstop.drivers.errors import BackstopError, BadInputError
from backstop.drivers.redact import redact_url
from backstop.tasks.leases import fresh_leases
from backstop.tasks.manifest import Manifest, Role
from backstop.tasks.store import ArtifactStore, StoreSpec

# A drill record passed later than now by more than this is a lie (or a broken clock): it
# would keep the drill alert quiet for as long as it says.
CLOCK_SKEW_S = 3600.0
STATUSES = ("completed", "quality_failed")

SourceKey = tuple[str, str]  # (technology, redacted sources)
IdentityKey = tuple[str, tuple[str, ...]]  # (technology, the sources' identities)


@dataclass
class LastBackup:
    """The figures of a source's newest ordinary backup that passed its checks."""

    order: tuple[float, str]
    finished_at: float
    bytes: float
    records: float
    duration_s: float


@dataclass
class StoreFigures:
    last: dict[SourceKey, LastBackup] = field(default_factory=dict)
    failed: dict[SourceKey, float] = field(default_factory=dict)
    counts: dict[SourceKey, Counter[str]] = field(default_factory=dict)
    drills: dict[SourceKey, float] = field(default_factory=dict)
    incomplete: Counter[str] = field(default_factory=Counter)
    unreadable: Counter[str] = field(default_factory=Counter)
    technologies: set[str] = field(default_factory=set)


@dataclass
class _Source:
    """What the store holds of one source (one identity) while the store is read."""

    label: str
    label_order: tuple[bool, float, str]  # ordinary backups' URLs first, then the newest
    last: LastBackup | None = None
    counts: Counter[str] = field(default_factory=Counter)
    drill: float | None = None  # None: no drill backup of it; 0.0: none passed
    failed: float | None = None  # when its newest backup that failed quality finished

    def merge(self, other: _Source) -> None:
        """Another identity under the same label (a server rebuilt at the same URL)."""
        if other.last and (self.last is None or other.last.order > self.last.order):
            self.last = other.last
        self.counts.update(other.counts)
        if other.failed is not None:
            self.failed = max(other.failed, self.failed or -math.inf)
        if other.drill is not None:
            self.drill = max(other.drill, self.drill or 0.0)


@dataclass(frozen=True)
class Contribution:
    """What one complete backup adds to the figures: a few numbers and its source's
    label, not its manifest (the `--listen` server keeps one per backup it has read)."""

    technology: str
    identity: tuple[str, ...]  # its sources' identities: the group it belongs to
    label: str
    ordinary: bool
    drill: bool
    passed: bool  # its quality checks passed
    backup: LastBackup

    @property
    def backup_id(self) -> str:
        return self.backup.order[1]


def contribution_of(manifest: Manifest) -> Contribution | None:
    """None for a safety backup (its sources are a restore's targets); ValueError or
    OverflowError when its figures cannot be exposed."""
    backup = _backup_figures(manifest)
    if manifest.role is not Role.DRILL and not manifest.ordinary:
        return None
    return Contribution(
        technology=manifest.technology,
        identity=tuple(sys.intern(s) for s in manifest.source_set),
        # interned: a source's hundreds of backups share one label string
        label=sys.intern(source_label(manifest)),
        ordinary=manifest.ordinary,
        drill=manifest.role is Role.DRILL,
        passed=manifest.quality.status == "passed",
        backup=backup,
    )


def source_label(manifest: Manifest) -> str:
    # Manifests hold redacted URLs; redacted again in case an old one did not.
    return ",".join(redact_url(s) for s in manifest.sources)


def read_store_figures(store: ArtifactStore, now: datetime | None = None) -> StoreFigures:
    """One pass over the store's folders: each manifest read, folded in, dropped."""
    now = now or datetime.now(UTC)
    figures = StoreFigures()
    sources: dict[IdentityKey, _Source] = {}
    last_s = now.timestamp()
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
        try:
            contribution = contribution_of(manifest)
        except (ValueError, OverflowError):  # parsed, but its figures cannot be exposed
            figures.unreadable[tech] += 1
            continue
        if contribution is None:
            continue
        claimed = claimed_drill_pass(store, contribution) if contribution.drill else None
        fold(sources, contribution, claimed, last_s)
    group_by_label(figures, sources)
    return figures


def group_by_label(figures: StoreFigures, sources: dict[IdentityKey, _Source]) -> None:
    by_label: dict[SourceKey, _Source] = {}
    for (tech, _identity), source in sources.items():
        known = by_label.setdefault((tech, source.label), source)
        if known is not source:
            known.merge(source)
    for key, source in by_label.items():
        if source.last:
            figures.last[key] = source.last
        if source.counts:
            figures.counts[key] = source.counts
        if source.drill is not None:
            figures.drills[key] = source.drill
        if source.failed is not None:
            figures.failed[key] = source.failed


def _backup_figures(manifest: Manifest) -> LastBackup:
    """A manifest's figures as the floats exposed, or ValueError/OverflowError: computed
    before anything is counted, so a manifest is folded in whole or not at all."""
    finished_at, started_at = _seconds(manifest.finished_at), _seconds(manifest.started_at)
    return LastBackup(
        order=(finished_at, manifest.backup_id),
        finished_at=finished_at,
        bytes=_count(manifest.totals.bytes),
        records=_count(manifest.totals.records),
        duration_s=round(finished_at - started_at, 3),
    )


def _count(value: int) -> float:
    number = float(value)  # OverflowError past 1.8e308
    if number < 0:
        raise ValueError(f"a negative count: {value}")
    return number


def _seconds(moment: datetime) -> float:
    # Backstop writes UTC times with their zone; one without is read as UTC (as drill
    # records are), never compared with an aware one (a TypeError).
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def fold(
    sources: dict[IdentityKey, _Source], backup: Contribution, claimed_pass: float | None,
    now_s: float,
) -> None:  # fmt: skip
    """Add a backup to its source's figures; `claimed_pass`: a drill backup's record's
    pass time (see claimed_drill_pass), believed here against the backup and now."""
    order = (backup.ordinary, *backup.backup.order)
    source = sources.setdefault((backup.technology, backup.identity), _Source(backup.label, order))
    if order > source.label_order:
        source.label, source.label_order = backup.label, order
    if backup.drill:
        passed_at = claimed_pass if _believable(claimed_pass, backup.backup, now_s) else None
        # 0: drilled, and no passed drill to show (failed, pruned, or a record that lies).
        source.drill = max(passed_at or 0.0, source.drill or 0.0)
        return
    status = "completed" if backup.passed else "quality_failed"
    source.counts[status] += 1
    if status == "quality_failed":
        source.failed = max(backup.backup.finished_at, source.failed or -math.inf)
    elif source.last is None or backup.backup.order > source.last.order:
        source.last = backup.backup


def claimed_drill_pass(store: ArtifactStore, backup: Contribution) -> float | None:
    """When a drill backup's record says its drill passed; None without such a record
    (none, one of another backup, of no pass, or no readable time)."""
    record = store.read_drill_record(backup.technology, backup.backup_id)
    if not record or record.get("backup_id") != backup.backup_id:
        return None
    if record.get("status") != "passed":
        return None
    return _timestamp(record.get("passed_at"))


def _believable(passed_at: float | None, backup: LastBackup, now_s: float) -> bool:
    """A pass before the backup finished or after now (beyond clock skew) is not."""
    if passed_at is None:
        return False
    return backup.finished_at - CLOCK_SKEW_S <= passed_at <= now_s + CLOCK_SKEW_S


def _timestamp(value: object) -> float | None:
    try:
        moment = datetime.fromisoformat(str(value))
        return _seconds(moment)
    except (ValueError, OverflowError):
        return None


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
            "When the newest complete, validated ordinary backup of a source finished "
            "(0: the store holds backups of it, none of them validated)",
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
    for tech, source in sorted(figures.counts.keys() - figures.last.keys()):
        last["timestamp"].add_metric([tech, source], 0.0)  # so the staleness alert fires
    failed = GaugeMetricFamily(
        "backstop_backup_last_quality_failed_timestamp_seconds",
        "When the newest ordinary backup of a source that failed its data-quality checks "
        "finished (newer than the last success: the newest backup failed them)",
        labels=labels,
    )
    for (tech, source), finished_at in sorted(figures.failed.items()):
        failed.add_metric([tech, source], finished_at)
    totals = GaugeMetricFamily(
        "backstop_store_backups",
        "Complete ordinary backups of a source the store holds, by status "
        "(completed, or quality_failed: kept but refused by restore without --force)",
        labels=[*labels, "status"],
    )
    for (tech, source), counts in sorted(figures.counts.items()):
        for status in STATUSES:
            totals.add_metric([tech, source, status], counts[status])
    drills = GaugeMetricFamily(
        "backstop_drill_last_success_timestamp_seconds",
        "When the newest drill of a source passed (restored and verified equal; 0: the "
        "store holds drill backups of it, none with a passed drill's record)",
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
    return [up, *last.values(), failed, totals, drills, incomplete, unreadable]


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


def only_metrics(app: Callable) -> Callable:
    """prometheus-client answers every path with the metrics (its start_http_server
    too): /metrics only, 404 elsewhere, so a scanner or a mistyped path learns nothing."""

    def metrics_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Not found: backstop metrics serves /metrics only\n"]
        return app(environ, start_response)

    return metrics_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every 15 s is no news


def _metrics_server(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    class Server(ThreadingWSGIServer):
        # IPv4 or IPv6, as the host is (what prometheus-client's own server does).
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    app = only_metrics(make_wsgi_app(registry))
    return make_server(host, port, app, Server, handler_class=_QuietHandler)


def serve(spec: StoreSpec, listen: str) -> None:
    """Serve /metrics until interrupted (SIGTERM/SIGINT: a clean stop)."""
    host, port = parse_listen(listen)
    from backstop.flows.metrics_refresh import StoreCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(spec))
    try:
        server = _metrics_server(host, port, registry)
    except OSError as exc:
        raise BadInputError(
            f"--listen {listen}: cannot listen there: {exc.strerror or exc}"
        ) from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
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
