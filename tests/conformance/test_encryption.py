"""Encrypted backups, every driver (issue 14): the store holds no readable content, the
right identity restores exactly, a missing or wrong one is refused before the target is
touched, and a damaged encrypted file fails verification with or without the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from backstop.tasks import crypto

pytestmark = pytest.mark.integration

WINDOW = 24  # bytes of raw content that, seen in a stored file, show it is readable


def _keys(folder: Path, name: str) -> tuple[Path, str]:
    """An identity file (0600) and its recipient."""
    identity, recipient = crypto.generate_identity()
    path = folder / f"{name}.key"
    crypto.private_key_file(path, identity + "\n")
    return path, recipient


def _stored_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file()]


def _visible_windows(store: Path) -> list[bytes]:
    """Pieces of the raw records that a plain backup's stored (compressed) files show as
    they are: what an encrypted store must not show. Found, not assumed, so the check
    below cannot pass for want of anything to look for."""
    found: list[bytes] = []
    for path in _stored_files(store):
        if not path.name.endswith(".zst"):
            continue
        stored = path.read_bytes()
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
        for start in range(0, max(0, len(raw) - WINDOW), 97):
            window = raw[start : start + WINDOW]
            if len(set(window)) > 8 and window in stored:  # skip runs of one byte
                found.append(window)
            if len(found) >= 40:
                return found
    return found


def _encrypted_data_files(store: Path) -> list[Path]:
    return [p for p in _stored_files(store) if p.name.endswith(".zst.age")]


def _everything(store: Path) -> bytes:
    """Every stored byte, file names included, and a plain store's data decompressed (a
    name inside compressed records is a name the backup holds)."""
    parts = []
    for path in _stored_files(store):
        parts += [str(path.relative_to(store)).encode(), path.read_bytes()]
        if path.name.endswith(".zst"):
            parts.append(zstandard.ZstdDecompressor().decompressobj().decompress(parts[-1]))
    return b"\0".join(parts)


def _spellings(name: str) -> list[bytes]:
    """A name as UTF-8 and as JSON writes it (escaped)."""
    return [name.encode(), json.dumps(name)[1:-1].encode()]


def test_an_encrypted_backup_shows_nothing_and_restores_only_with_its_identity(
    harness, run, tmp_path
):
    source = harness.make_source()
    before = harness.digest(source)
    keys = tmp_path / "keys"
    keys.mkdir()
    _, recipient = _keys(keys, "operator")
    recovery, recovery_recipient = _keys(keys, "recovery")
    stranger, _ = _keys(keys, "stranger")

    plain_store = tmp_path / "plain-store"
    plain = run.cli("backup", harness.technology, *harness.source_args(source),
                    "--store", str(plain_store), "--json")  # fmt: skip
    assert plain.code == 0, plain.stdout + plain.stderr
    windows = _visible_windows(plain_store)
    assert windows, f"{harness.id}: no raw content visible in a plain backup to look for"

    backed_up = run.backup(source, "--recipient", recipient, "--recipient", recovery_recipient)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    encrypted_store = Path(run.store.removeprefix("file://"))
    for path in _stored_files(encrypted_store):
        content = path.read_bytes()
        shown = [w for w in windows if w in content]
        assert not shown, f"{path}: raw content readable in an encrypted backup: {shown[:3]}"
    data_files = _encrypted_data_files(encrypted_store)
    assert data_files and all(
        p.read_bytes().startswith(b"age-encryption.org/v1\n") for p in data_files
    )
    # Nor any name of a table, a collection, a znode: not in file names, not in the
    # manifest (its plain envelope; the rest is sealed).
    plain_bytes = _everything(plain_store)
    encrypted_bytes = _everything(encrypted_store)
    for name in harness.content_names:
        spellings = _spellings(name)
        assert any(s in plain_bytes for s in spellings), f"{name!r} is no name of the source"
        assert not any(s in encrypted_bytes for s in spellings), (
            f"{harness.id}: the name {name!r} shows in an encrypted store"
        )

    # No identity, a stranger's: refused before the target is touched.
    target = harness.make_target()
    empty = harness.digest(target)
    missing = run.restore(target)
    assert missing.code == 2 and "encrypted" in missing.json["error"], missing.stdout
    wrong = run.restore(target, "--identity", str(stranger))
    assert wrong.code == 2 and "opens" in wrong.json["error"], wrong.stdout
    assert harness.digest(target) == empty, "a refused restore touched the target"

    # The recovery key alone restores everything exactly.
    restored = run.restore(target, "--identity", str(recovery))
    assert restored.code == 0, restored.stdout + restored.stderr
    assert restored.json["verified"] is True
    assert harness.digest(target) == before
    assert harness.records(target) == harness.records(source)

    # An overwrite's safety backup of the target: encrypted, and always to the restoring
    # identity too (its rollback reads it with that), whatever recipients were given.
    stranger_recipient = crypto.generate_identity()[1]
    again = run.restore(target, "--mode", "overwrite", "--identity", str(recovery),
                        "--recipient", stranger_recipient)  # fmt: skip
    assert again.code == 0, again.stdout + again.stderr
    assert harness.digest(target) == before
    safety = again.json["safety_backup"]
    if safety:  # a driver whose target held what the overwrite replaces
        manifest = json.loads(next(encrypted_store.rglob(f"{safety}/manifest.json")).read_text())
        assert set(manifest["encryption"]["recipients"]) == {
            crypto.fingerprint(recovery_recipient),
            crypto.fingerprint(stranger_recipient),
        }
    data_files = _encrypted_data_files(encrypted_store)
    assert all(p.read_bytes().startswith(b"age-encryption.org/v1\n") for p in data_files)

    # Verify: without the identity the stored bytes, with it everything; with a key that
    # opens nothing (after a rotation), the stored bytes, and no error.
    assert run.verify().json["stored_bytes_only"] == len(data_files)
    assert run.verify("--identity", str(recovery)).json["stored_bytes_only"] == 0
    rotated = run.verify("--identity", str(stranger))
    assert rotated.code == 0 and rotated.json["stored_bytes_only"] == len(data_files)

    # Rotation: `rekey` re-encrypts every encrypted backup to a new key, which alone
    # then restores it exactly; the old key opens nothing, the names stay hidden.
    rotated, rotated_recipient = _keys(keys, "rotated")
    rekeyed = run("rekey", "--store", run.store, "--identity", str(recovery),
                  "--recipient", rotated_recipient, "--json")  # fmt: skip
    assert rekeyed.code == 0, rekeyed.stdout + rekeyed.stderr
    assert all(b["done"].startswith("re-encrypted") for b in rekeyed.json["backups"])
    fresh = harness.make_target()
    again = run.restore(fresh, "--identity", str(rotated), "--backup", backed_up.json["backup_id"])
    assert again.code == 0 and again.json["verified"] is True, again.stdout + again.stderr
    assert harness.digest(fresh) == before
    old_key = run.restore(harness.make_target(), "--identity", str(recovery),
                          "--backup", backed_up.json["backup_id"])  # fmt: skip
    assert old_key.code == 2, old_key.stdout
    encrypted_bytes = _everything(encrypted_store)
    assert not any(s in encrypted_bytes for n in harness.content_names for s in _spellings(n))
    data_files, recovery = _encrypted_data_files(encrypted_store), rotated

    # One flipped byte in the middle of an encrypted file: found with and without the key.
    damaged = data_files[0]
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    for extra in ((), ("--identity", str(recovery))):
        checked = run.verify(*extra)
        assert checked.code == 1, checked.stdout
        assert any(damaged.name in p for p in checked.json["problems"]), checked.stdout
