"""Sealed and signed manifests (tasks/sealed.py, tasks/signing.py) through a real local
store: what an attacker with write access to the store, or with a recipient's public
key, can and cannot make a restore host believe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_manifest import sample_manifest

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.flows.keys import generate_keys
from backstop.tasks import crypto, sealed, signing
from backstop.tasks.manifest import EncryptionInfo, Manifest
from backstop.tasks.store import StoreSpec


@pytest.fixture
def keys(tmp_path: Path) -> dict:
    return generate_keys(str(tmp_path / "keys"))


def _encrypted(manifest: Manifest, recipient: str) -> Manifest:
    files = [
        f.model_copy(update={"encryption": "age", "path": "0123456789abcdef0123.zst.age"})
        for f in manifest.units[0].files
    ]
    unit = manifest.units[0].model_copy(update={"files": files})
    return manifest.model_copy(
        update={
            "units": [unit],
            "encryption": EncryptionInfo(recipients=[crypto.fingerprint(recipient)]),
            "options": {"include": ["it's a \"cell\" tábla.v2"]},
        }
    )


def _store(tmp_path: Path, **keys) -> object:
    return StoreSpec(url=str(tmp_path / "store"), **keys).open()


def test_a_sealed_manifest_keeps_every_name_out_of_the_clear_and_opens_whole(tmp_path, keys):
    manifest = _encrypted(sample_manifest(), keys["recipient"])
    _store(tmp_path, recipients=[keys["recipient"]]).write_manifest(manifest)
    folder = tmp_path / "store" / "schemaless" / manifest.backup_id
    stored = b"".join(p.read_bytes() for p in folder.iterdir()) + str(list(folder.iterdir())).encode()
    for name in (b"shard-000", b"cells.cells", b"\"table\"", b"watermark", b"bla.v2"):
        assert name not in stored, name
    assert b"0123456789abcdef0123.zst.age" in stored  # the stored path is public

    envelope = _store(tmp_path).read_manifest("schemaless", manifest.backup_id)
    assert envelope.sealed is not None and envelope.units[0].name == "unit-0000"
    opened = _store(tmp_path, identity=keys["files"]["identity"]).read_manifest(
        "schemaless", manifest.backup_id
    )
    assert opened.sealed is None
    assert opened == manifest


def test_a_sealed_body_swapped_or_damaged_is_refused(tmp_path, keys):
    reader = _store(tmp_path, identity=keys["files"]["identity"])
    writer = _store(tmp_path, recipients=[keys["recipient"]])
    one = _encrypted(sample_manifest(), keys["recipient"])
    other = one.model_copy(update={"backup_id": one.backup_id[:-4] + "beef"})
    other = other.model_copy(
        update={"totals": other.totals.model_copy(update={"records": 99})}
    )
    writer.write_manifest(one)
    writer.write_manifest(other)
    root = tmp_path / "store" / "schemaless"
    body = root / one.backup_id / sealed.SEALED_NAME
    original = body.read_bytes()

    # Another backup's body (both written with the recipient's public key), hashes fixed.
    swapped = (root / other.backup_id / sealed.SEALED_NAME).read_bytes()
    body.write_bytes(swapped)
    envelope_path = root / one.backup_id / "manifest.json"
    envelope = json.loads(envelope_path.read_text())
    envelope["sealed"]["bytes"] = len(swapped)
    envelope["sealed"]["sha256"] = __import__("hashlib").sha256(swapped).hexdigest()
    envelope_path.write_text(json.dumps(envelope))
    with pytest.raises(IntegrityError, match="not the one its envelope describes"):
        reader.read_manifest("schemaless", one.backup_id)

    # A flipped byte: the envelope's hash says so before decryption is tried.
    envelope["sealed"]["bytes"], envelope["sealed"]["sha256"] = (
        len(original),
        __import__("hashlib").sha256(original).hexdigest(),
    )
    envelope_path.write_text(json.dumps(envelope))
    body.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match the size and SHA-256"):
        reader.read_manifest("schemaless", one.backup_id)
    body.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        reader.read_manifest("schemaless", one.backup_id)


def test_a_wrong_identity_is_bad_input_and_a_listing_falls_back_to_the_envelope(tmp_path, keys):
    manifest = _encrypted(sample_manifest(), keys["recipient"])
    _store(tmp_path, recipients=[keys["recipient"]]).write_manifest(manifest)
    stranger = generate_keys(str(tmp_path / "stranger"))["files"]["identity"]
    store = _store(tmp_path, identity=stranger)
    with pytest.raises(BadInputError, match="no identity given opens"):
        store.read_manifest("schemaless", manifest.backup_id)
    [listed] = store.scan().manifests
    assert listed.sealed is not None  # listed (a rotation's old backup), not opened


def test_signatures_refuse_unsigned_other_keys_and_changes(tmp_path, keys):
    manifest = sample_manifest()
    signer = _store(tmp_path, signing_key=keys["files"]["signing_key"])
    signer.write_manifest(manifest)
    folder = tmp_path / "store" / "schemaless" / manifest.backup_id

    checked = _store(tmp_path, verify_key=keys["verify_key"])
    assert checked.read_manifest("schemaless", manifest.backup_id) == manifest
    from_file = _store(tmp_path, verify_key=keys["files"]["verify_key"])
    assert from_file.read_manifest("schemaless", manifest.backup_id) == manifest

    other = generate_keys(str(tmp_path / "other"))
    with pytest.raises(IntegrityError, match="not by the verify key"):
        _store(tmp_path, verify_key=other["verify_key"]).read_manifest(
            "schemaless", manifest.backup_id
        )
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"passed"', '"failed"'))
    with pytest.raises(IntegrityError, match="changed after it was signed"):
        checked.read_manifest("schemaless", manifest.backup_id)
    (folder / "manifest.json").write_text(text)
    (folder / signing.SIGNATURE_NAME).write_text("{not json")
    with pytest.raises(IntegrityError, match="signature file is unreadable"):
        checked.read_manifest("schemaless", manifest.backup_id)
    (folder / signing.SIGNATURE_NAME).unlink()
    with pytest.raises(IntegrityError, match="is not signed"):
        checked.read_manifest("schemaless", manifest.backup_id)
    assert _store(tmp_path).read_manifest("schemaless", manifest.backup_id) == manifest


def test_keys_are_refused_where_they_do_not_belong(tmp_path, keys):
    private_text = Path(keys["files"]["signing_key"]).read_text()
    with pytest.raises(BadInputError, match="never as its text"):
        StoreSpec(url=str(tmp_path), signing_key=private_text).open()
    for wrong in (private_text, keys["files"]["signing_key"]):
        with pytest.raises(BadInputError, match="private key"):
            signing.load_verify_key(wrong)
    with pytest.raises(BadInputError, match="not an unencrypted PEM private key"):
        signing.load_signing_key(keys["files"]["verify_key"])
    with pytest.raises(BadInputError, match="not an Ed25519 public key"):
        signing.load_verify_key("ed25519:AAAA")
    with pytest.raises(BadInputError, match="never overwritten"):
        generate_keys(keys["dir"])
    for name in ("identity", "signing_key"):
        assert Path(keys["files"][name]).stat().st_mode & 0o077 == 0


# -- found by review: each fails without its fix --------------------------------------------
def _forged_newer(tmp_path: Path, real) -> object:
    """An unsigned backup, newer than `real`, planted by someone who can write the store."""
    from datetime import timedelta

    from backstop.tasks.manifest import new_backup_id

    forged = real.model_copy(
        update={
            "backup_id": new_backup_id(real.started_at + timedelta(hours=1)),
            "finished_at": real.finished_at + timedelta(hours=1),
        }
    )
    _store(tmp_path).write_manifest(forged)
    return forged


def test_a_signing_host_builds_only_on_what_it_signed(tmp_path, keys):
    real = sample_manifest()
    signer = _store(tmp_path, signing_key=keys["files"]["signing_key"])
    signer.write_manifest(real)
    _forged_newer(tmp_path, real)
    assert signer.newest_parent("schemaless", real.sources, real.source_ids) == real


def test_latest_refuses_to_skip_a_newer_backup_that_fails_the_signature_check(tmp_path, keys):
    from backstop.tasks.retention import take_inventory

    real = sample_manifest()
    _store(tmp_path, signing_key=keys["files"]["signing_key"]).write_manifest(real)
    forged = _forged_newer(tmp_path, real)
    checked = _store(tmp_path, verify_key=keys["verify_key"])
    with pytest.raises(IntegrityError, match=f"newer backup.*{forged.backup_id}"):
        checked.resolve("schemaless", "latest")
    assert checked.resolve("schemaless", real.backup_id) == real  # deliberately: allowed
    inventory = take_inventory(checked)  # what prune and status count: never the forgery
    assert [m.backup_id for ms in inventory.series.values() for m in ms] == [real.backup_id]
    assert [f.backup_id for f in inventory.unreadable] == [forged.backup_id]


def test_a_key_typed_into_a_run_form_is_found_and_masked(tmp_path, keys):
    from backstop.flows.params import VerifyRequest
    from backstop.tasks.secrets import _masked, literal_secrets_in

    pem = Path(keys["files"]["signing_key"]).read_text()
    identity = Path(keys["files"]["identity"]).read_text().splitlines()[-1]
    request = VerifyRequest(
        store=StoreSpec(url=str(tmp_path / "s"), signing_key=pem, identity=identity)
    )
    assert len(literal_secrets_in(request)) == 2
    stored = json.dumps(_masked(request.model_dump(mode="json")))
    assert "PRIVATE KEY" not in stored and "AGE-SECRET-KEY" not in stored


def test_a_missing_or_changed_sealed_part_is_found_without_the_identity(tmp_path, keys):
    manifest = _encrypted(sample_manifest(), keys["recipient"])
    _store(tmp_path, recipients=[keys["recipient"]]).write_manifest(manifest)
    store = _store(tmp_path)
    envelope = store.read_manifest("schemaless", manifest.backup_id)
    store.check_sealed_part(envelope)
    body = tmp_path / "store" / "schemaless" / manifest.backup_id / sealed.SEALED_NAME
    data = body.read_bytes()
    body.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="differs"):
        store.check_sealed_part(envelope)
    body.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        store.check_sealed_part(envelope)


@pytest.mark.parametrize("planted", ["dev-zero-link", "fifo"])
def test_a_data_file_that_never_ends_fails_instead_of_hanging(tmp_path, planted):
    import os
    import threading

    from backstop.tasks.packaging import StoreSource, check_file

    manifest = sample_manifest()
    store = _store(tmp_path)
    store.write_manifest(manifest)
    [file] = manifest.files
    path = Path(store.file_path("schemaless", manifest.backup_id, file.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    if planted == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            check_file(StoreSource(store, "schemaless", manifest.backup_id), file)
            outcome.append(None)
        except BaseException as exc:  # the outcome is asserted below
            outcome.append(exc)

    reader = threading.Thread(target=check, daemon=True)
    reader.start()
    reader.join(60)
    assert outcome, "the check still reads after 60 s"
    assert isinstance(outcome[0], IntegrityError), outcome


def test_keys_generate_writes_through_no_planted_link(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    (folder / "verify-key.pem").symlink_to(victim)  # dangling: exists() says no
    with pytest.raises(BadInputError, match="never overwritten"):
        generate_keys(str(folder))
    assert not victim.exists()


def test_recipients_may_come_from_a_reference(tmp_path, keys, monkeypatch):
    """A Secret block (or a variable) holding the recipients, one per line: deployments
    keep their list of public keys in one place."""
    other = generate_keys(str(tmp_path / "other"))
    monkeypatch.setenv(
        "BACKSTOP_TEST_RECIPIENTS", f"# operators\n{keys['recipient']}\n{other['recipient']}\n"
    )
    spec = StoreSpec(url=str(tmp_path / "s"), recipients=["${env:BACKSTOP_TEST_RECIPIENTS}"])
    assert spec.encryption_keys().fingerprints == [
        crypto.fingerprint(keys["recipient"]),
        crypto.fingerprint(other["recipient"]),
    ]
    monkeypatch.setenv("BACKSTOP_TEST_RECIPIENTS", "# nobody\n")
    with pytest.raises(BadInputError, match="names no recipient"):
        spec.encryption_keys()
