"""Client-side encryption of stored files in the age format (C2SP age v1).

A data file is compressed, then encrypted to one or more X25519 recipients
(`age1...` public keys) by pyrage, the Rust implementation of age: a backup host needs
only public keys. Decryption needs an identity (`AGE-SECRET-KEY-1...`), which never
travels as a parameter: a flow is given where to find it, a file on the machine that
runs the task or a `${secret:BLOCK}` / `${env:NAME}` reference, resolved in that process.

pyrage streams between file objects it pulls from and pushes to; packaging pushes
compressed blocks and pulls decrypted ones. So each direction runs pyrage on a thread
of its own, joined to the pipeline by a bounded queue of blocks (`_Pipe`): memory stays
a few 64 KiB age chunks, and an error on either side reaches the other.

A stored file decrypts with the reference tool: `age -d -i key.txt FILE | zstd -d`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import pyrage
from pydantic import SecretStr
from pyrage import x25519

from backstop.drivers.errors import BadInputError, IntegrityError

AGE = "age"  # StoredFile.encryption of a file encrypted by this module
RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
_PIPE_BLOCKS = 8
_POLL_S = 0.5  # how often a side blocked on the pipe looks whether the other failed


# -- keys ----------------------------------------------------------------------------------
def parse_recipients(values: Iterable[str]) -> list[x25519.Recipient]:
    """X25519 recipients from their `age1...` strings; BadInputError names a bad one."""
    out = []
    for value in values:
        text = value.strip()
        if IDENTITY_PREFIX in text.upper():  # never echo any of a private key
            raise BadInputError(
                "an identity (a private key) was given where a recipient (a public key, "
                "age1...) belongs; `age-keygen -y KEYFILE` prints the public key"
            )
        try:
            out.append(x25519.Recipient.from_str(text))
        except (pyrage.RecipientError, ValueError) as exc:
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise BadInputError(
                f"recipient {shown!r} is not an age X25519 public key ({exc})"
            ) from None
    return out


def recipients_in_file(path: str | Path) -> list[str]:
    """The recipients of a recipients file, as `age -R` reads one: one per line, blank
    lines and `#` comments skipped."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"recipients file {str(path)!r} cannot be read: {exc}") from None
    return _recipients_in_text(text, f"recipients file {str(path)!r}")


def _recipients_in_text(text: str, where: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line and not line.startswith("#")]
    if not found:
        raise BadInputError(f"{where} names no recipient")
    parse_recipients(found)
    return found


def is_reference(value: str) -> bool:
    """A `${secret:BLOCK}` / `${env:NAME}` reference, resolved where the key is used."""
    return "${" in value


def expand_recipients(values: Iterable[str]) -> list[str]:
    """Recipients as given, with each reference replaced by the recipients its value
    holds (a Prefect Secret block with one or more public keys, one per line)."""
    from backstop.tasks.secrets import resolve_url

    out: list[str] = []
    for value in values:
        if is_reference(value):
            out += _recipients_in_text(resolve_url(value), f"reference {value}")
        else:
            out.append(value)
    return out


_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def shown_key_path(reference: str | Path) -> str:
    """A key file's path as an error may show it: not when its last part looks like key
    text (a key pasted where its file's path belongs would be echoed to the terminal
    and the logs that keep it)."""
    name = os.path.basename(str(reference).rstrip("/"))
    if _KEY_LIKE.search(name) or IDENTITY_PREFIX in str(reference).upper():
        return "(a path that looks like key text, not shown: give the key's file)"
    return repr(str(reference))


def fingerprint(recipient: str) -> str:
    """What a manifest records of a recipient: enough to tell which key opens a backup.
    Of the key's canonical spelling, so AGE1... and age1... are one fingerprint."""
    [parsed] = parse_recipients([recipient])
    return "sha256:" + hashlib.sha256(str(parsed).encode()).hexdigest()[:16]


def parse_identities(text: str, where: str) -> list[x25519.Identity]:
    """The X25519 identities in an age identity file's text (`age-keygen` output)."""
    keys = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not keys:
        raise BadInputError(f"identity {where} holds no age identity")
    identities = []
    for key in keys:
        try:
            identities.append(x25519.Identity.from_str(key))
        except (pyrage.IdentityError, ValueError):
            # Never the line itself: it may be a key with a typo.
            raise BadInputError(
                f"identity {where} holds a line that is not an age X25519 identity"
            ) from None
    return identities


def load_identities(reference: str) -> list[x25519.Identity]:
    """Identities from where a flow was told to find them: a `${secret:BLOCK}` or
    `${env:NAME}` reference holding the key text, or a file's path."""
    from backstop.tasks.secrets import resolve_url

    if "${" in reference:
        text = resolve_url(reference)  # resolved in this process, registered for masking
        return parse_identities(text, "reference " + reference)
    path = Path(reference).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(
            f"identity file {shown_key_path(reference)} cannot be read: {_reason(exc)}"
        ) from None
    return parse_identities(text, f"file {shown_key_path(reference)}")


def _reason(exc: BaseException) -> str:
    """An OSError's reason without the file name it repeats."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def refuse_literal_identity(reference: str | None) -> None:
    """An identity's text as a parameter would be stored by Prefect with the run."""
    if reference and IDENTITY_PREFIX in reference.upper():
        raise BadInputError(
            "an identity is given as a file or a ${secret:BLOCK} reference, never as its "
            "text (Prefect stores a run's parameters)"
        )


def read_back_pair() -> tuple[SecretStr, str]:
    """A one-time key for one backup's read-back: (identity, recipient). An encrypted
    backup's files are encrypted to this recipient too, so the read-back decrypts and
    decodes every file on hosts that hold public keys only. The flow keeps the identity
    and hands it to the read-back tasks as a SecretStr (on Dask workers, in other
    processes, too); Prefect stores no task parameter, and the key is forgotten when the
    backup ends, and with it any use of that extra recipient."""
    identity = x25519.Identity.generate()
    return SecretStr(str(identity)), str(identity.to_public())


def generate_identity() -> tuple[str, str]:
    """A new X25519 key pair: (identity text, recipient)."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


# -- the pipe between packaging and pyrage's thread ------------------------------------------
class _Closed(Exception):
    """The other side stopped; raised into pyrage to end its stream."""


class _Pipe:
    """Blocks from one thread to another through a bounded queue. `fail` on either side
    makes the other side's next call raise instead of waiting for ever."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPE_BLOCKS)
        self.error: BaseException | None = None
        self._buffer = memoryview(b"")
        self._ended = False

    def put(self, block: bytes | None) -> None:
        while True:
            if self.error is not None:
                raise _Closed() from self.error
            try:
                self._queue.put(block, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self) -> bytes | None:
        while True:
            if self.error is not None:
                raise _Closed() from self.error
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def readinto(self, buffer: memoryview) -> int:
        while not self._buffer and not self._ended:
            block = self.get()
            if block is None:
                self._ended = True
            else:
                self._buffer = memoryview(block)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc


class _PipeReader(io.RawIOBase):
    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._pipe.readinto(memoryview(buffer).cast("B"))


class _PipeWriter(io.RawIOBase):
    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        block = bytes(data)
        self._pipe.put(block)
        return len(block)


class _Worker:
    """pyrage's stream on a thread; its error kept for the pipeline's side."""

    def __init__(self, name: str, run, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.error: BaseException | None = None
        self._run = run
        self._thread = threading.Thread(target=self._main, name=f"backstop-{name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported to the pipeline's side
            self.error = exc
            self.pipe.fail(exc)

    def join(self) -> None:
        self._thread.join()


# -- encrypting writes ----------------------------------------------------------------------
class _KeepingWriter(io.RawIOBase):
    """`out` as pyrage writes to it, keeping the first error its writes raise: pyrage
    reports it as an EncryptError, and the store's own error (a full disk, a lost
    connection) is what the backup must classify."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self._out.write(bytes(data))
        except BaseException as exc:
            self.error = self.error or exc
            raise


class Encryptor:
    """A writable file whose bytes reach `out` encrypted to `recipients`."""

    def __init__(self, out: IO[bytes], recipients: list[x25519.Recipient]) -> None:
        self._pipe = _Pipe()
        self._out = _KeepingWriter(out)
        self._worker = _Worker(
            "encrypt",
            lambda: pyrage.encrypt_io(_PipeReader(self._pipe), self._out, recipients),
            self._pipe,
        )

    def _failure(self) -> BaseException:
        return self._out.error or self._worker.error or OSError("encryption stopped")

    def write(self, data: bytes) -> int:
        block = bytes(data)
        try:
            self._pipe.put(block)
        except _Closed:
            raise self._failure() from None
        return len(block)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """End the stream: pyrage writes the final chunk; raise its error if it failed
        (or if a write into `out` failed, which pyrage may not report at its end)."""
        with contextlib.suppress(_Closed):
            self._pipe.put(None)
        self._worker.join()
        if self._worker.error is not None or self._out.error is not None:
            raise self._failure()

    def abort(self) -> None:
        self._pipe.fail(OSError("the backup of this file was abandoned"))
        self._worker.join()


# -- decrypting reads ------------------------------------------------------------------------
class _KeepingReader(io.RawIOBase):
    """`source` as pyrage reads it, keeping the first error its reads raise: a store's
    connection reset is retried as itself, not reported as a file that cannot be
    decrypted."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._source.read(len(buffer))
        except BaseException as exc:
            self.error = self.error or exc
            raise
        buffer[: len(data)] = data
        return len(data)


class Decryptor(io.RawIOBase):
    """The plaintext of an age stream read from `source`, authenticated chunk by chunk
    (age's STREAM: a changed, reordered or cut chunk fails; nothing unauthenticated is
    returned). A failure is an IntegrityError naming `label`."""

    def __init__(self, source: IO[bytes], identities: list[x25519.Identity], label: str):
        self._label = label
        self._pipe = _Pipe()
        self._source = _KeepingReader(source)

        def run() -> None:
            pyrage.decrypt_io(self._source, _PipeWriter(self._pipe), identities)
            self._pipe.put(None)

        self._worker = _Worker("decrypt", run, self._pipe)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._pipe.readinto(memoryview(buffer).cast("B"))
        except _Closed:
            raise self._failure() from None

    def _failure(self) -> BaseException:
        if self._source.error is not None:
            return self._source.error
        error = self._worker.error
        if isinstance(error, pyrage.DecryptError) and "No matching keys" in str(error):
            return BadInputError(
                f"{self._label}: none of the identities given opens this file "
                "(it was encrypted to other recipients)"
            )
        return IntegrityError(f"{self._label}: cannot be decrypted ({error or 'stopped'})")

    def close(self) -> None:
        if not self.closed:
            self._pipe.fail(OSError("reading stopped"))
            self._worker.join()
        super().close()


def check_identities_open(source: IO[bytes], identities: list[x25519.Identity], label: str):
    """Raise BadInputError unless `identities` open the age file `source` (its header
    alone is read: a wrong key is found before anything is written anywhere)."""
    reader = Decryptor(source, identities, label)
    try:
        reader.read(1)
    finally:
        reader.close()


def private_key_file(path: Path, text: str) -> None:
    """Write a key file readable by its owner only, refusing to replace one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
