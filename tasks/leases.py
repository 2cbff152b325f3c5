"""Leases: how backup, restore and prune agree on which backups are in use.

    <store>/<technology>/<backup_id>/.lease-<kind>-<token>.json

A running backup holds a `backup` lease on its own folder; a restore holds a `restore`
lease on every backup it reads (an incremental's whole chain). The holder rewrites its
lease every REFRESH_S seconds from a daemon thread and removes it when it ends, failed
or not. `prune` leaves alone every folder holding a fresh lease (rewritten within
STALE_S seconds), whatever its policy or grace period says. A holder that is killed
stops rewriting: its lease goes stale and the folder is prunable again, so a crash
never pins a folder for ever.

Freshness is the newer of the heartbeat the holder wrote and the time the store says
the lease file was last written, so a clock that runs behind on either side keeps a
lease alive rather than letting a running backup be deleted. A time more than
MAX_CLOCK_AHEAD_S in the future is not believed (a forged or mis-dated lease would
otherwise keep its folder for ever): such a lease counts as stale.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backstop.tasks.store import ArtifactStore

LEASE_PREFIX = ".lease-"
REFRESH_S = float(os.environ.get("BACKSTOP_LEASE_REFRESH_S", "60"))
STALE_S = 600.0  # ten missed heartbeats: the holder is gone
MAX_CLOCK_AHEAD_S = 300.0  # a heartbeat dated further ahead than this is not believed
_MAX_LEASE_BYTES = 4096

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease someone holds, as prune sees it."""

    kind: str
    holder: str
    age_s: float
    name: str = ""  # the lease file, relative to the store

    def describe(self) -> str:
        doing = "backup running" if self.kind == "backup" else f"{self.kind} in progress"
        return (
            f"{doing} ({self.holder}, heartbeat {self.age_s:.0f} s ago; once sure that "
            f"holder is gone, delete {self.name} to break the lease)"
        )


class Lease:
    """A lease held while a backup is written or read; a context manager."""

    def __init__(self, store: ArtifactStore, technology: str, backup_id: str, kind: str) -> None:
        self._store = store
        self.kind = kind
        name = f"{LEASE_PREFIX}{kind}-{secrets.token_hex(6)}.json"
        self.path = posixpath.join(store.backup_dir(technology, backup_id), name)
        self.holder = f"{socket.gethostname()} pid {os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, required: bool = True) -> Lease:
        """Write the lease and start its heartbeat. A restore from a store it may only
        read (`required=False`) goes on without one, saying so."""
        try:
            self._write()
        except Exception as exc:
            if required:
                raise
            log.warning("no %s lease on %s (prune may remove it meanwhile): %s",
                        self.kind, self._store.relative(self.path), exc)  # fmt: skip
            return self
        self._thread = threading.Thread(
            target=self._beat, name=f"backstop-lease-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat, then remove the lease (idempotent, never raises)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            with contextlib.suppress(Exception):
                self._store.fs.rm_file(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write(self) -> None:
        record = {
            "kind": self.kind,
            "holder": self.holder,
            "heartbeat": datetime.now(UTC).isoformat(),
        }
        with self._store.open_write(self.path) as fh:
            fh.write(json.dumps(record).encode())

    def _beat(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self._write()
            except Exception as exc:  # a store hiccup: the next beat tries again
                log.warning("refreshing the lease %s failed: %s", self.path, exc)


def fresh_leases(
    store: ArtifactStore, technology: str, backup_id: str, now: datetime | None = None
) -> list[LeaseInfo]:
    """The leases on a backup folder that are not stale."""
    now = now or datetime.now(UTC)
    folder = store.backup_dir(technology, backup_id)
    found = []
    for entry in _entries(store, folder):
        if not posixpath.basename(entry["name"]).startswith(LEASE_PREFIX):
            continue
        lease = _read_lease(store, entry, now)
        if lease.age_s < STALE_S:
            found.append(lease)
    return found


def _entries(store: ArtifactStore, folder: str) -> list[dict[str, Any]]:
    try:
        return store.fs.ls(folder, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    except TypeError:  # filesystems without `refresh`
        return store.fs.ls(folder, detail=True)


def _read_lease(store: ArtifactStore, entry: dict[str, Any], now: datetime) -> LeaseInfo:
    """A lease file being rewritten may read empty or cut short: its file time still
    counts, so a lease is never taken for stale because it was read mid-write."""
    times = [t for t in (_written_at(entry),) if t is not None]
    kind, holder = "unknown", "unknown holder"
    try:
        with store.fs.open(entry["name"], "rb") as fh:
            record = json.loads(fh.read(_MAX_LEASE_BYTES))
        kind, holder = str(record["kind"])[:32], str(record["holder"])[:200]
        times.append(datetime.fromisoformat(record["heartbeat"]))
    except FileNotFoundError:
        pass  # released meanwhile: its file time (if listed) still decides
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # A time further ahead than clocks drift apart is no heartbeat: a forged or
    # future-dated lease would otherwise pin its folder against prune for ever.
    believable = [t for t in map(_aware, times) if (t - now).total_seconds() <= MAX_CLOCK_AHEAD_S]
    newest = max(believable, default=None)
    age = (now - newest).total_seconds() if newest else STALE_S
    return LeaseInfo(
        kind=kind, holder=holder, age_s=max(age, 0.0), name=store.relative(entry["name"])
    )


def _written_at(entry: dict[str, Any]) -> datetime | None:
    value = entry.get("mtime", entry.get("LastModified", entry.get("created")))
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
