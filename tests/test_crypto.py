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
