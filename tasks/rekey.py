"""Re-encrypting a stored backup to new recipients: key rotation without a restore.

Each data file is read with the old identity (every checksum verified on the way: the
stored bytes' SHA-256, age's authentication, the raw content's SHA-256), compressed and
encrypted again to the new recipients under a new random name, and read back (through
a one-time recipient, as a backup's read-back is) before anything refers to it. Then
the manifest is replaced, whole or not at all, sealed to the new recipients and signed
with the signing key given (store.write_manifest(replacing=True)), and only then are
the old files removed. A run cut short leaves the old manifest and its files, or the
new ones, plus files no manifest names, which the next run removes: running it again
is how to finish it. A lease keeps prune away meanwhile, and a backup someone is
reading (a restore's lease) is left alone.
"""

from __future__ import annotations

import copy
import dataclasses

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks import crypto
from backstop.tasks.leases import Lease, fresh_leases
from backstop.tasks.manifest import EncryptionInfo, Manifest, totals_of
from backstop.tasks.packaging import SUFFIX, StoreSink, StoreSource, check_file
from backstop.tasks.store import ArtifactStore

_READ_SIZE = 1 << 20


def rekey_backup(store: ArtifactStore, technology: str, backup_id: str) -> str:
    """Re-encrypt one backup to store.keys.recipients, reading with store.keys.identities;
    returns what was done, in a few words."""
    if store.keys.verify_key_implied:
        # The new signing key did not sign what is stored: check with --verify-key only.
        store = _with_keys(store, verify_key=None, verify_key_implied=False)
    held = fresh_leases(store, technology, backup_id)
    if held:
        raise BadInputError(f"{technology}/{backup_id} is in use: {held[0].describe()}")
    with Lease(store, technology, backup_id, "rekey"):
        envelope = store.read_manifest(technology, backup_id, unseal=False)
        if envelope.encryption is None:
            return "plain: left alone (only encrypted backups are re-encrypted)"
        done = "already encrypted to these recipients"
        if sorted(set(envelope.encryption.recipients)) != sorted(set(store.keys.fingerprints)):
            manifest = store.read_manifest(technology, backup_id)  # BadInputError: wrong key
            if manifest.sealed is not None:  # an envelope: no identity was given
                raise BadInputError(
                    f"{technology}/{backup_id}: no identity given opens it (recipients "
                    f"{', '.join(manifest.encryption.recipients)})"
                )
            if store.is_signed(technology, backup_id) and store.keys.signing_key is None:
                raise BadInputError(
                    f"{technology}/{backup_id} is signed: give --signing-key, so that its "
                    "re-encrypted manifest is signed too"
                )
            manifest = _reencrypted(store, manifest)
            store.write_manifest(manifest, replacing=True)
            done = "re-encrypted"
        removed = _remove_unnamed(store, technology, backup_id)
    return done + (f"; removed {removed} file(s) no manifest names" if removed else "")


def _reencrypted(store: ArtifactStore, manifest: Manifest) -> Manifest:
    technology, backup_id = manifest.technology, manifest.backup_id
    source = StoreSource(store, technology, backup_id)
    identity, recipient = crypto.read_back_pair()  # lives as long as this call
    extra = crypto.parse_recipients([recipient])
    writer = _with_keys(store, recipients=[*store.keys.recipients, *extra])
    opens = crypto.parse_identities(identity.get_secret_value(), "the read-back key")
    checker = StoreSource(_with_keys(store, identities=opens), technology, backup_id)
    sink = StoreSink(writer, technology, backup_id)
    units = []
    for unit in manifest.units:
        files = []
        for file in unit.files:
            name = file.name.removesuffix(SUFFIX)
            with source.open(file) as stream, sink.open(name, format=file.format) as out:
                while data := stream.read(_READ_SIZE):
                    out.write(data)
            written = sink.files[-1]
            if (written.raw_bytes, written.raw_sha256) != (file.raw_bytes, file.raw_sha256):
                raise IntegrityError(f"{file.name}: re-encrypted content differs")
            new = file.model_copy(
                update={"path": written.path, "bytes": written.bytes, "sha256": written.sha256}
            )
            check_file(checker, new, rehash_raw=False)  # decrypts and decodes: the read-back
            files.append(new)
        units.append(unit.model_copy(update={"files": files}))
    return manifest.model_copy(
        update={
            "units": units,
            "totals": totals_of(units),
            "encryption": EncryptionInfo(recipients=list(store.keys.fingerprints)),
        }
    )


def _with_keys(store: ArtifactStore, **keys) -> ArtifactStore:
    other = copy.copy(store)
    other.keys = dataclasses.replace(store.keys, **keys)
    return other


def _remove_unnamed(store: ArtifactStore, technology: str, backup_id: str) -> int:
    """What the manifest in place does not name: the files an earlier run (or this one)
    replaced or left half written."""
    envelope = store.read_manifest(technology, backup_id, unseal=False)
    named = {f.name for f in envelope.files} | ({envelope.sealed.name} if envelope.sealed else set())
    return store.remove_unnamed(technology, backup_id, named)

