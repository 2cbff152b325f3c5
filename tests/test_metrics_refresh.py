"""`backstop metrics --listen` on an S3 store (moto): a later scrape reads what changed
only. Manifests never change once written, so a manifest read once is never fetched
again; what can change (a prune, a new backup, a folder whose backup finishes, a drill
record written after its backup) shows on the next scrape. Reads are counted as the S3
requests the store's client sends, not timed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from test_metrics_inputs import NOW, _manifest, _passed

from backstop.flows.metrics_refresh import StoreCollector
from backstop.tasks.manifest import Role, new_backup_id
from backstop.tasks.store import ArtifactStore, StoreSpec

Samples = dict[tuple[str, str | None, str | None], float]


class CountedStore:
    """The moto store, written directly (as a backup would leave it), with every S3 read
    of a manifest or drill record recorded from the client's own request events."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self.store: ArtifactStore = spec.open()  # fsspec's cached instance: the server's
        self.store.fs.connect()
        self.reads: list[str] = []
        events = self.store.fs.s3.meta.events
        for operation in ("GetObject", "HeadObject"):
            events.register(f"before-parameter-build.s3.{operation}", self._record)
        self.count = 0

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        key = params.get("Key", "")
        if key.endswith(("/manifest.json", "/drill.json")):
            self.reads.append("/".join(key.split("/")[-2:]))

    def put(self, source: str, *, role: Role = Role.ADHOC, complete: bool = True) -> str:
        self.count += 1
        backup_id = f"{new_backup_id(NOW)[:-4]}{self.count:04x}"
        folder = f"{self.store.root}/schemaless/{backup_id}"
        self.store.fs.pipe({f"{folder}/shard-000/cells.zst": b"cells"})
        if complete:
            self.finish(backup_id, source, role)
        return backup_id

    def finish(self, backup_id: str, source: str, role: Role = Role.ADHOC) -> None:
        manifest = _manifest(backup_id, source, role=role, finished=NOW)
        path = f"{self.store.root}/schemaless/{backup_id}/manifest.json"
        self.store.fs.pipe({path: json.dumps(manifest).encode()})

    def scrape(self, collector: StoreCollector) -> Samples:
        self.reads.clear()
        families: list[GaugeMetricFamily] = list(collector.collect())
        return {
            (s.name, s.labels.get("source"), s.labels.get("status")): s.value
            for family in families
            for s in family.samples
            if s.name != "backstop_store_read_age_seconds"
        }


def test_a_later_scrape_reads_only_what_changed(s3_store: StoreSpec):
    store = CountedStore(s3_store)
    pruned = store.put("sqlite:///pruned.db")
    kept = [store.put("sqlite:///kept.db") for _ in range(3)]
    drill = store.put("sqlite:///kept.db", role=Role.DRILL)
    running = store.put("sqlite:///kept.db", complete=False)  # no manifest, no lease
    # A refresh on every scrape, waited for: each scrape below sees the store as it is.
    collector = StoreCollector(s3_store, cache_s=0.0, wait_s=600)

    first = store.scrape(collector)
    manifests = {f"{b}/manifest.json" for b in (pruned, *kept, drill, running)}
    assert set(store.reads) == manifests | {f"{drill}/drill.json"}
    assert first[("backstop_store_backups", "sqlite:///kept.db", "completed")] == 3
    assert first[("backstop_store_backups", "sqlite:///pruned.db", "completed")] == 1
    assert first[("backstop_drill_last_success_timestamp_seconds", "sqlite:///kept.db", None)] == 0
    assert first[("backstop_store_incomplete_backups", None, None)] == 1

    # Nothing changed: only what can change is looked at again (the folder without a
    # manifest, the drill without a record), no manifest read before.
    assert store.scrape(collector) == first
    assert sorted(store.reads) == sorted([f"{running}/manifest.json", f"{drill}/drill.json"])

    # Prune one, back up a new source, the running backup finishes, the drill passes.
    store.store.delete_backup("schemaless", pruned)
    new = store.put("sqlite:///new.db")
    store.finish(running, "sqlite:///kept.db")
    store.store.write_drill_record("schemaless", drill, _passed(drill, NOW))
    third = store.scrape(collector)
    assert sorted(store.reads) == sorted(
        [f"{new}/manifest.json", f"{running}/manifest.json", f"{drill}/drill.json"]
    )
    assert not {source for (_name, source, _status) in third} & {"sqlite:///pruned.db"}
    assert third[("backstop_store_backups", "sqlite:///new.db", "completed")] == 1
    assert third[("backstop_store_backups", "sqlite:///kept.db", "completed")] == 4
    assert third[("backstop_store_incomplete_backups", None, None)] == 0
    passed = third[("backstop_drill_last_success_timestamp_seconds", "sqlite:///kept.db", None)]
    assert passed == pytest.approx(NOW.timestamp(), abs=1e-3)

    # From now on nothing at all is read again: every folder is complete, the drill's
    # pass is known, and the folders' listing is all a scrape asks for.
    assert store.scrape(collector) == third
    assert store.reads == []
    assert set(collector.cache.seen) == {("schemaless", b) for b in (*kept, drill, running, new)}
