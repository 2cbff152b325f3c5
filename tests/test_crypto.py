"""The age layer (tasks/crypto.py) against the reference `age` tool, and its failures:
a changed or cut file, a wrong key, a reader that stops early, keys given wrongly."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard

from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.tasks import crypto


def _age_tool() -> str:
    path = shutil.which("age")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the reference age tool is not installed (tests/servers/install.sh)")
        pytest.skip("the reference age tool is not installed")
    return path


def _encrypt(data: bytes, recipients: list[str], piece: int = 100_000) -> bytes:
    out = io.BytesIO()
    encryptor = crypto.Encryptor(out, crypto.parse_recipients(recipients))
    for start in range(0, len(data), piece):
        encryptor.write(data[start : start + piece])
    encryptor.close()
    return out.getvalue()


def _decrypt(blob: bytes, identity: str) -> bytes:
    reader = crypto.Decryptor(io.BytesIO(blob), crypto.parse_identities(identity, "t"), "f")
    try:
        return reader.read()
    finally:
        reader.close()


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str, str]:
    identity, recipient = crypto.generate_identity()
    path = tmp_path / "key.txt"
    crypto.private_key_file(path, identity + "\n")
    return path, identity, recipient


def test_what_backstop_encrypts_the_age_tool_decrypts_and_back(key, tmp_path):
    path, identity, recipient = key
    data = os.urandom(200_000) + b"backstop" * 300_000  # several 64 KiB age chunks
    stored = zstandard.ZstdCompressor().compress(data)
    encrypted = tmp_path / "file.zst"
    encrypted.write_bytes(_encrypt(stored, [recipient]))
    tool = _age_tool()
    decrypted = subprocess.run(
        [tool, "-d", "-i", str(path), str(encrypted)], capture_output=True, check=True
    ).stdout
    assert zstandard.ZstdDecompressor().decompressobj().decompress(decrypted) == data

    by_tool = subprocess.run(
        [tool, "-r", recipient], input=stored, capture_output=True, check=True
    ).stdout
    assert _decrypt(by_tool, identity) == stored


def test_a_changed_or_cut_file_is_an_integrity_error_and_a_wrong_key_bad_input(key):
    _, identity, recipient = key
    blob = _encrypt(os.urandom(300_000), [recipient])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    for damaged in (bytes(flipped), blob[:-7], blob[: len(blob) // 2]):
        with pytest.raises(IntegrityError, match="cannot be decrypted"):
            _decrypt(damaged, identity)
    stranger, _ = crypto.generate_identity()
    with pytest.raises(BadInputError, match="none of the identities"):
        _decrypt(blob, stranger)


def test_a_reader_that_stops_early_leaves_no_thread_behind(key):
    _, identity, recipient = key
    blob = _encrypt(os.urandom(4 << 20), [recipient])
    before = threading.active_count()
    for _ in range(5):
        reader = crypto.Decryptor(io.BytesIO(blob), crypto.parse_identities(identity, "t"), "f")
        assert len(reader.read(1000)) == 1000
        reader.close()
    assert threading.active_count() == before


def test_a_failing_store_write_reaches_the_writer(key):
    _, _, recipient = key

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            raise OSError(28, "No space left on device")

    encryptor = crypto.Encryptor(Full(), crypto.parse_recipients([recipient]))
    with pytest.raises(OSError, match="No space left"):
        for _ in range(1000):  # the pipe fills, then the failure comes back
            encryptor.write(os.urandom(64 << 10))
        encryptor.close()


def test_keys_given_wrongly_are_refused_without_showing_them(tmp_path, key):
    _, identity, _ = key
    with pytest.raises(BadInputError, match="not an age X25519 public key"):
        crypto.parse_recipients(["age1notakey"])
    with pytest.raises(BadInputError, match="never as its text") as refused:
        crypto.refuse_literal_identity(identity)
    assert identity not in str(refused.value)
    typo = tmp_path / "typo.txt"
    typo.write_text(identity[:-3] + "xyz\n")
    with pytest.raises(BadInputError, match="not an age X25519 identity") as bad:
        crypto.load_identities(str(typo))
    assert identity[:-3] not in str(bad.value)
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("# backup hosts\n\n")
    with pytest.raises(BadInputError, match="names no recipient"):
        crypto.recipients_in_file(recipients)


# -- through packaging and the flows (review findings) ---------------------------------------
def _one_encrypted_file(tmp_path: Path, recipient: str, identity_path: Path):
    """A store holding one encrypted file written by StoreSink: (store, source, file)."""
    from backstop.tasks.packaging import StoreSink, StoreSource
    from backstop.tasks.store import StoreSpec

    spec = StoreSpec(url=str(tmp_path / "store"), recipients=[recipient])
    sink = StoreSink(spec.open(), "schemaless", "20261128T000000Z-abcd")
    with sink.open("shard/cells", format="test/1") as writer:
        writer.write(os.urandom(300_000), records=1)
    [file] = sink.files
    reading = StoreSpec(url=spec.url, identity=str(identity_path)).open()
    return reading, StoreSource(reading, "schemaless", "20261128T000000Z-abcd"), file


def test_a_damaged_header_is_damage_not_a_wrong_key(tmp_path, key):
    from backstop.tasks.manifest import EncryptionInfo
    from backstop.tasks.packaging import check_decryptable, check_file

    path, _, recipient = key
    store, source, file = _one_encrypted_file(tmp_path, recipient, path)
    assert check_file(source, file) is True
    stored = tmp_path / "store" / "schemaless" / "20261128T000000Z-abcd" / file.path
    content = bytearray(stored.read_bytes())
    # Another base64 letter inside the X25519 stanza: reads as a key that does not match.
    content[40] = ord("A") if content[40] != ord("A") else ord("B")
    stored.write_bytes(bytes(content))
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        check_file(source, file)

    class Link:  # what check_decryptable reads of a chain link
        backup_id = "20261128T000000Z-abcd"
        files = [file]
        encryption = EncryptionInfo(recipients=[crypto.fingerprint(recipient)])
        sealed = None  # its manifest was opened

    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        check_decryptable(store, "schemaless", [Link()])


def test_a_store_read_error_while_decrypting_is_that_error(key):
    _, identity, recipient = key
    blob = _encrypt(os.urandom(1 << 20), [recipient])

    class Resetting(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(blob)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            if self._inner.tell() > 200_000:
                raise ConnectionResetError("connection reset by peer")
            return self._inner.read(size)

    reader = crypto.Decryptor(Resetting(), crypto.parse_identities(identity, "t"), "f")
    with pytest.raises(ConnectionResetError):
        reader.read()


def test_a_private_key_given_as_a_recipient_is_not_echoed(key):
    _, identity, _ = key
    with pytest.raises(BadInputError, match="where a recipient") as refused:
        crypto.parse_recipients([identity])
    assert "AGE-SECRET-KEY" not in str(refused.value)


def test_a_manifest_that_says_encrypted_and_holds_a_plain_file_is_damaged(tmp_path, key):
    from pydantic import ValidationError

    from backstop.tasks.manifest import Manifest

    path, _, recipient = key
    _, _, file = _one_encrypted_file(tmp_path, recipient, path)
    body = {
        "technology": "schemaless", "backup_id": "20261128T000000Z-abcd",
        "backstop_version": "0", "driver": {"name": "schemaless", "version": "1"},
        "sources": ["sqlite:///x"], "started_at": "2026-11-28T00:00:00Z",
        "finished_at": "2026-11-28T00:00:01Z", "consistency": {"kind": "snapshot"},
        "units": [{"name": "shard", "source": "sqlite:///x", "records": 1,
                   "files": [file.model_dump(mode="json")]}],
        "totals": {"files": 1, "records": 1, "bytes": 1, "raw_bytes": 1},
        "quality": {"status": "passed"},
        "encryption": {"recipients": [crypto.fingerprint(recipient)]},
    }  # fmt: skip
    Manifest.model_validate(body)
    body["units"][0]["files"][0]["encryption"] = None  # downgraded to a plain file
    with pytest.raises(ValidationError, match="encrypted, yet 1 file"):
        Manifest.model_validate(body)
    body["units"][0]["files"][0]["encryption"] = ""
    with pytest.raises(ValidationError):
        Manifest.model_validate(body)


def test_no_clear_link_on_an_encrypted_chain_and_no_drill_left_behind(cli, shards, tmp_path, key):
    _, _, recipient = key
    store = str(tmp_path / "S")
    sources = [arg for url in shards for arg in ("--source", url)]
    full = cli("backup", "schemaless", *sources, "--store", store, "--recipient", recipient,
               "--json")  # fmt: skip
    assert full.code == 0, full.stdout + full.stderr
    clear = cli("backup", "schemaless", *sources, "--store", store, "--incremental", "--json")
    assert clear.code == 2 and "is encrypted" in clear.json["error"], clear.stdout
    scratch = [f"sqlite:///{tmp_path / f'scratch{i}.db'}" for i in range(len(shards))]
    drill = cli("drill", "schemaless", *sources, *[a for u in scratch for a in ("--scratch", u)],
                "--store", store, "--recipient", recipient, "--json")  # fmt: skip
    assert drill.code == 2 and "--identity" in drill.json["error"], drill.stdout
    assert len(list((tmp_path / "S" / "schemaless").iterdir())) == 1  # the full backup only
