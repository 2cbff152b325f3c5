"""What a resume believes of an incomplete folder (tasks/resume.py), attacked directly:
records are bound to their backup (a copy from another backup is passed over), a host
that signs accepts only its own signature, a sealed record that no identity opens is
passed over when others open, and nothing is removed from a folder that another run
has completed. The flows' use of them: tests/conformance/test_resume.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from backstop.drivers.contract import StoredUnit
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.flows.keys import FILES, generate_keys
from backstop.tasks import resume
from backstop.tasks.manifest import Role
from backstop.tasks.store import StoreSpec

TECH = "schemaless"
A, B = "20261128T120000Z-aaaa", "20261128T120000Z-bbbb"


def _unit(name: str, records: int = 10) -> resume.Snapshot:
    return resume.Snapshot(unit=StoredUnit(name=name, source=f"sqlite:///{name}.db", records=records))


def _mark(backup_id: str) -> resume.ResumeMark:
    return resume.ResumeMark(
        technology=TECH, backup_id=backup_id, started_at=datetime.now(UTC), sources=["s"],
        source_ids=["i"], options_sha256=resume.options_digest({}), role=Role.ADHOC,
    )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    generate_keys(str(tmp_path / "keys"))
    other = tmp_path / "other"
    generate_keys(str(other))
    files = {k: str(tmp_path / "keys" / v) for k, v in FILES.items()}
    return files | {"other_signing_key": str(other / FILES["signing_key"])}


def _store(tmp_path: Path, **keys: object):
    store = StoreSpec(url=str(tmp_path / "store"), **keys).open()
    for backup_id in (A, B):
        folder = Path(store.backup_dir(TECH, backup_id))
        folder.mkdir(parents=True, exist_ok=True)
        resume.write_mark(store, _mark(backup_id))
    return store


def _found(store) -> dict[str, int]:
    warnings: list[str] = []
    found = resume.done_units(store, TECH, A, warnings.append)
    return {name: snap.unit.records for name, (_, snap) in found.items()}


@pytest.mark.parametrize("signed", [False, True])
def test_a_record_copied_from_another_backup_is_passed_over(tmp_path, keys, signed):
    store = _store(tmp_path, signing_key=keys["signing_key"] if signed else None)
    resume.record_done(store, TECH, A, _unit("shard-001", records=1000))
    resume.record_done(store, TECH, B, _unit("shard-000", records=200))
    folder_a, folder_b = Path(store.backup_dir(TECH, A)), Path(store.backup_dir(TECH, B))
    [copied] = folder_b.glob("done-*.json")
    (folder_a / copied.name).write_bytes(copied.read_bytes())  # B's shard-000 planted in A
    assert _found(store) == {"shard-001": 1000}


def test_a_signing_host_passes_over_records_it_did_not_sign(tmp_path, keys):
    unsigned = _store(tmp_path)
    resume.record_done(unsigned, TECH, A, _unit("shard-000"))
    foreign = StoreSpec(url=str(tmp_path / "store"), signing_key=keys["other_signing_key"]).open()
    resume.record_done(foreign, TECH, A, _unit("shard-001"))
    own = StoreSpec(url=str(tmp_path / "store"), signing_key=keys["signing_key"]).open()
    resume.record_done(own, TECH, A, _unit("shard-002"))
    assert _found(own) == {"shard-002": 10}
    assert _found(unsigned) == {"shard-000": 10, "shard-001": 10, "shard-002": 10}


def test_a_signing_host_refuses_a_mark_it_did_not_sign(tmp_path, keys):
    _store(tmp_path)  # marks written unsigned
    own = StoreSpec(url=str(tmp_path / "store"), signing_key=keys["signing_key"]).open()
    with pytest.raises(IntegrityError, match="not signed"):
        resume.read_mark(own, TECH, A)


def test_a_sealed_record_no_identity_opens_is_passed_over_when_others_open(tmp_path, keys):
    spec = {"recipients": [Path(keys["recipient"]).read_text().strip()], "identity": keys["identity"]}
    store = _store(tmp_path, **spec)
    resume.record_done(store, TECH, A, _unit("shard-000"))
    junk = Path(store.backup_dir(TECH, A)) / ("done-" + "0" * 20 + ".json")
    junk.write_text(
        f'{{"kind": "done", "technology": "{TECH}", "backup_id": "{A}", "sealed": true,'
        ' "body": "anVuaw=="}'
    )
    assert _found(store) == {"shard-000": 10}
    blind = StoreSpec(url=str(tmp_path / "store"), recipients=spec["recipients"]).open()
    with pytest.raises(BadInputError, match="give --identity"):
        _found(blind)


def test_nothing_is_removed_from_a_folder_another_run_completed(tmp_path):
    store = _store(tmp_path)
    folder = Path(store.backup_dir(TECH, A))
    (folder / "manifest.json").write_text("{}")
    (folder / "shard-000.cells.zst").write_bytes(b"data")
    with pytest.raises(BadInputError, match="nothing was removed"):
        resume.clear_unkept(store, TECH, A, keep=set())
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "resume.json", "shard-000.cells.zst"
    ]  # fmt: skip
