"""Drills and monitoring events: `backstop drill` proves a backup restores; every
outcome emits a Prefect event about the (redacted) source."""

from __future__ import annotations

from pathlib import Path

import pytest

from backstop.drivers.errors import BackstopError
from backstop.flows.backup import backup
from backstop.flows.params import BackupRequest, RestoreRequest, VerifyRequest
from backstop.flows.restore import restore
from backstop.flows.verify import verify


def _args(flag: str, urls: list[str]) -> list[str]:
    return [a for url in urls for a in (flag, url)]


def test_drill_passes_and_emits_its_events(cli, shards, local_store, tmp_path, captured_events):
    scratch = [f"sqlite:///{tmp_path / f'scratch{i}.db'}" for i in range(len(shards))]
    result = cli(
        "drill", "schemaless", *_args("--source", shards), *_args("--scratch", scratch),
        "--store", local_store.url, "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.json["status"] == "passed" and result.json["verified"] is True
    assert result.json["records"] == 6_000 and result.json["restore_s"] > 0
    # A second drill overwrites the same scratch targets and passes again.
    again = cli(
        "drill", "schemaless", *_args("--source", shards), *_args("--scratch", scratch),
        "--store", local_store.url, "--json",
    )  # fmt: skip
    assert again.code == 0 and again.json["records"] == 6_000

    names = [e.event for e in captured_events()]
    assert names.count("backstop.drill.passed") == 2
    assert names.count("backstop.backup.completed") == 2
    assert names.count("backstop.restore.completed") == 2
    passed = next(e for e in captured_events() if e.event == "backstop.drill.passed")
    assert passed.resource["backstop.technology"] == "schemaless"
    assert shards[0] in passed.resource.id
    assert passed.payload["records"] == 6_000


def test_a_drill_whose_scratch_is_its_source_is_refused(cli, shards, local_store):
    result = cli(
        "drill", "schemaless", *_args("--source", shards), *_args("--scratch", shards),
        "--store", local_store.url, "--json",
    )  # fmt: skip
    assert result.code == 2 and "also a --source" in result.json["error"]
    assert local_store.open().folders() == []


def test_failures_emit_failed_events_naming_the_source_without_its_password(
    tmp_path: Path, local_store, captured_events, shards
):
    url = "postgresql+psycopg://backstop:hunter2-pw@127.0.0.1:1/nowhere"
    with pytest.raises(BackstopError):
        backup(request=BackupRequest(technology="schemaless", sources=[url], store=local_store))
    [failed] = [e for e in captured_events() if e.event == "backstop.backup.failed"]
    assert "127.0.0.1:1/nowhere" in failed.resource.id
    assert "hunter2" not in failed.model_dump_json()
    assert failed.payload["error"]

    ok = backup(request=BackupRequest(technology="schemaless", sources=shards, store=local_store))
    data = next(
        p
        for p in (tmp_path / "store" / "schemaless" / ok.backup_id).rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BackstopError):
        verify(request=VerifyRequest(store=local_store))
    with pytest.raises(BackstopError):
        restore(
            request=RestoreRequest(
                technology="schemaless", store=local_store,
                targets=[f"sqlite:///{tmp_path / f'r{i}.db'}" for i in range(len(shards))],
            )
        )  # fmt: skip
    events = captured_events()
    [verify_failed] = [e for e in events if e.event == "backstop.verify.failed"]
    assert verify_failed.payload["backup_id"] == ok.backup_id
    assert verify_failed.payload["stage"] == "backup files"
    [restore_failed] = [e for e in events if e.event == "backstop.restore.failed"]
    assert shards[0] in restore_failed.resource.id  # about the backed-up source
    assert "failed verification" in restore_failed.payload["error"]


def test_a_fleets_event_names_its_sources_in_a_resource_id_an_index_can_hold(
    local_store, captured_events
):
    """Prefect indexes the resource id, and PostgreSQL refuses an index entry past 2,704
    bytes: a fleet's event names its sources by a digest, the same for the same fleet."""

    def fleet(count: int) -> list[str]:
        return [
            f"postgresql+psycopg://backstop:hunter2-pw@127.0.0.1:1/shard_{i:04d}"
            for i in range(count)
        ]

    for sources in (fleet(300), fleet(300), fleet(301)):
        with pytest.raises(BackstopError):
            backup(
                request=BackupRequest(technology="schemaless", sources=sources, store=local_store)
            )
    first, again, other = [e for e in captured_events() if e.event == "backstop.backup.failed"]
    assert len(first.resource.id.encode()) <= 2400
    assert first.resource.id == again.resource.id != other.resource.id
    assert first.resource.id.startswith("backstop.source.schemaless.postgresql+psycopg://")
    assert first.resource["backstop.sources"] == "300"
    assert "hunter2" not in first.model_dump_json()
