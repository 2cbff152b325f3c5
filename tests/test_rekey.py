"""Re-encrypting stored backups to new recipients (tasks/rekey.py) through a real local
store: the content survives byte for byte, only the new identity opens it, and a run cut
short at any step leaves a backup that opens, which the next run finishes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_manifest import sample_manifest

from backstop.drivers.errors import BadInputError
from backstop.flows.keys import generate_keys
from backstop.tasks import crypto
from backstop.tasks.manifest import EncryptionInfo, totals_of
from backstop.tasks.packaging import StoreSink, StoreSource
from backstop.tasks.rekey import rekey_backup
from backstop.tasks.store import ArtifactStore, StoreSpec

CONTENT = {"shard-000/cells.cells": os.urandom(300_000), "shard-000/trips.cells": b"x" * 5000}


@pytest.fixture
def old(tmp_path: Path) -> dict:
    return generate_keys(str(tmp_path / "old"))


@pytest.fixture
def new(tmp_path: Path) -> dict:
    return generate_keys(str(tmp_path / "new"))


def _store(tmp_path: Path, **keys) -> ArtifactStore:
    return StoreSpec(url=str(tmp_path / "store"), **keys).open()


def _encrypted_backup(tmp_path: Path, keys: dict) -> str:
    """A backup of CONTENT, encrypted to `keys` and signed with its signing key."""
    store = _store(
        tmp_path, recipients=[keys["recipient"]], signing_key=keys["files"]["signing_key"]
    )
    manifest = sample_manifest()
    sink = StoreSink(store, "schemaless", manifest.backup_id)
    for name, data in CONTENT.items():
        with sink.open(name, format="schemaless-cells/1") as out:
            out.write(data, 1)
    unit = manifest.units[0].model_copy(update={"files": sink.files, "records": 2})
    manifest = manifest.model_copy(
        update={
            "units": [unit],
            "totals": totals_of([unit]),
            "encryption": EncryptionInfo(recipients=[crypto.fingerprint(keys["recipient"])]),
        }
    )
    store.write_manifest(manifest)
    return manifest.backup_id


def _content(store: ArtifactStore, backup_id: str) -> dict[str, bytes]:
    manifest = store.read_manifest("schemaless", backup_id)
    source = StoreSource(store, "schemaless", backup_id)
    out = {}
    for file in manifest.files:
        with source.open(file) as stream:
            out[file.name.removesuffix(".zst")] = b"".join(iter(lambda: stream.read(1 << 16), b""))
    return out


def _rekeying(tmp_path: Path, old: dict, new: dict) -> ArtifactStore:
    return _store(
        tmp_path,
        identity=old["files"]["identity"],
        recipients=[new["recipient"]],
        signing_key=new["files"]["signing_key"],
    )


def test_a_rekeyed_backup_opens_with_the_new_identity_only(tmp_path, old, new):
    backup_id = _encrypted_backup(tmp_path, old)
    folder = tmp_path / "store" / "schemaless" / backup_id
    before = {p.name for p in folder.iterdir()}
    done = rekey_backup(_rekeying(tmp_path, old, new), "schemaless", backup_id)
    assert done == "re-encrypted; removed 3 file(s) no manifest names"  # 2 data, 1 sealed

    reader = _store(tmp_path, identity=new["files"]["identity"], verify_key=new["verify_key"])
    assert _content(reader, backup_id) == CONTENT
    with pytest.raises(BadInputError, match="no identity given opens"):
        _store(tmp_path, identity=old["files"]["identity"]).read_manifest("schemaless", backup_id)
    after = {p.name for p in folder.iterdir()}
    assert not (before - {"manifest.json", "manifest.sig"}) & after, "old files were kept"
    for path in folder.iterdir():  # nothing in the folder opens with the old key
        if path.name.endswith(".age"):
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                crypto.Decryptor(path.open("rb"), crypto.load_identities(old["files"]["identity"]),
                                 path.name).read()  # fmt: skip
    again = rekey_backup(_rekeying(tmp_path, old, new), "schemaless", backup_id)
    assert again == "already encrypted to these recipients"


@pytest.mark.parametrize("step", ["write_manifest", "_commit_local_manifest", "after_commit"])
def test_a_rekey_cut_short_leaves_a_backup_that_opens_and_is_finished_by_running_again(
    tmp_path, old, new, step, monkeypatch
):
    backup_id = _encrypted_backup(tmp_path, old)
    folder = tmp_path / "store" / "schemaless" / backup_id

    class Cut(Exception):
        pass

    if step == "after_commit":  # the new manifest is in place; the old files remain
        monkeypatch.setattr(
            "backstop.tasks.rekey._remove_unnamed", lambda *a: (_ for _ in ()).throw(Cut())
        )
    else:
        real = getattr(ArtifactStore, step)

        def cut(self, *args, **kwargs):
            if step == "write_manifest" and kwargs.get("replacing"):
                raise Cut()  # every new data file written, no manifest touched
            if step == "_commit_local_manifest":
                raise Cut()  # new sealed part and both signatures written, manifest not
            return real(self, *args, **kwargs)

        monkeypatch.setattr(ArtifactStore, step, cut)
    with pytest.raises(Cut):
        rekey_backup(_rekeying(tmp_path, old, new), "schemaless", backup_id)
    monkeypatch.undo()

    # Whichever manifest is in place opens, whole and signed, with its own identity.
    opens_with = new if step == "after_commit" else old
    reader = _store(tmp_path, identity=opens_with["files"]["identity"],
                    verify_key=opens_with["verify_key"] if step == "after_commit"
                    else old["verify_key"])  # fmt: skip
    if step == "_commit_local_manifest":  # the signature file holds both: the old one checks
        assert b"signatures" in (folder / "manifest.sig").read_bytes()
    assert _content(reader, backup_id) == CONTENT
    assert not list(tmp_path.rglob("*.tmp"))

    # Running it again finishes it: the new identity opens it, nothing else is left.
    rekey_backup(_rekeying(tmp_path, old, new), "schemaless", backup_id)
    reader = _store(tmp_path, identity=new["files"]["identity"], verify_key=new["verify_key"])
    assert _content(reader, backup_id) == CONTENT
    envelope = reader.read_manifest("schemaless", backup_id, unseal=False)
    named = {f.name for f in envelope.files} | {envelope.sealed.name, "manifest.json",
                                                "manifest.sig"}  # fmt: skip
    assert {p.name for p in folder.iterdir()} == named


def test_a_signed_backup_is_not_rekeyed_unsigned(tmp_path, old, new):
    backup_id = _encrypted_backup(tmp_path, old)
    unsigned = _store(tmp_path, identity=old["files"]["identity"], recipients=[new["recipient"]])
    with pytest.raises(BadInputError, match="give --signing-key"):
        rekey_backup(unsigned, "schemaless", backup_id)
    assert _content(_store(tmp_path, identity=old["files"]["identity"]), backup_id) == CONTENT
