"""Packaging: serialized records -> zstd -> SHA-256 -> store, and back.

Nothing here holds more than one compression block in memory: the writer hashes
and compresses what the driver hands it and passes it straight to the store's
file object; the reader decompresses as the driver reads and checks both digests
when the stream ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, Generic, TypeVar

import zstandard

from backstop.drivers.contract import QualityChunk, StoredFile
from backstop.drivers.errors import BadInputError, IntegrityError
from backstop.drivers.stop import check_stop
from backstop.tasks import crypto
from backstop.tasks.store import ArtifactStore

COMPRESSION = "zstd"
SUFFIX = ".zst"
DEFAULT_LEVEL = 3
# One zstd worker thread: compression overlaps with the driver's Python work (measured
# 25% faster backups on 2 cores) while memory stays bounded by zstd's job size.
ZSTD_THREADS = 1
_READ_SIZE = 1 << 20
_STAGE_QUEUE = 8  # blocks waiting for a pipeline stage
_STAGE_BLOCK = 256 << 10  # smaller writes are gathered into blocks of this size

# The largest zstd window a stored file may ask for. backstop writes level 3 (a 2 MiB
# window at most); every level but --ultra stays within 8 MiB. A crafted frame cannot
# make the reader allocate more than this, whatever its header says.
MAX_WINDOW = 32 << 20

Progress = Callable[[int, int], None]  # (records, raw bytes) just written or read
Observe = Callable[[QualityChunk], None]  # a chunk of the records just packaged
T = TypeVar("T")


class Stage(Generic[T]):
    """One step of the packaging pipeline on a thread of its own.

    SHA-256, zstd and the store's writes release the GIL, so stages overlap with the
    driver's reading and with each other; each queue is bounded, so memory stays a
    few blocks per stage. (The quality suite's chunks take a stage too: tasks/backup.py.)
    """

    def __init__(
        self, name: str, consume: Callable[[T], object], maxsize: int = _STAGE_QUEUE
    ) -> None:
        self._consume = consume
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"backstop-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(block)
                except BaseException as exc:  # raised to the producer on its next call
                    self._error = exc

    def put(self, block: T) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def close(self) -> None:
        """Wait for every queued block; raise the stage's error if there was one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _StoreWriter:
    """The file zstd writes into: counts the compressed bytes and hands them to the
    stage that hashes them and writes them to the store."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.sha = hashlib.sha256()
        self.bytes = 0
        self._fh = fh
        self.stage = Stage("store-writer", self._store)

    def _store(self, block: bytes) -> None:
        self.sha.update(block)
        self._fh.write(block)

    def write(self, data: bytes) -> int:
        block = bytes(data)  # zstd may reuse its buffer once this returns
        self.bytes += len(block)
        self.stage.put(block)
        return len(block)

    def flush(self) -> None:
        pass  # close() drains the stage; the store's file flushes when it closes


class PackagedWriter:
    """What a driver writes into: counts records, then hashes the raw bytes and
    compresses them on a stage thread, the store writer hashing and writing the
    compressed bytes on another."""

    def __init__(
        self,
        fh: IO[bytes],
        level: int,
        progress: Progress | None,
        recipients: list[Any] | None = None,
    ) -> None:
        self._out = _StoreWriter(fh)
        # Encrypted: zstd's output goes through age on its way to the store writer, which
        # then hashes and counts the encrypted bytes (the file as stored).
        self._encryptor = crypto.Encryptor(self._out, recipients) if recipients else None
        # The frame's content checksum lets the read-back prove decoding without a
        # second SHA-256 of the raw bytes (and lets `zstd -t` check a file on its own).
        compressor = zstandard.ZstdCompressor(
            level=level, threads=ZSTD_THREADS, write_checksum=True
        )
        self._zstd = compressor.stream_writer(
            self._encryptor or self._out, closefd=False, write_return_read=True
        )
        self._raw_sha = hashlib.sha256()
        self._compress = Stage("compress", self._hash_and_compress)
        self._pending = bytearray()
        self._progress = progress
        self.raw_bytes = 0
        self.records = 0

    def _hash_and_compress(self, block: bytes) -> None:
        self._raw_sha.update(block)
        self._zstd.write(block)

    def write(self, data: bytes, records: int = 0) -> None:
        check_stop()
        self.raw_bytes += len(data)
        self.records += records
        if self._pending or len(data) < _STAGE_BLOCK:
            # Small writes are gathered: a stage hand-off costs more than a copy.
            self._pending += data
            if len(self._pending) >= _STAGE_BLOCK:
                self._compress.put(bytes(self._pending))
                self._pending.clear()
        else:
            self._compress.put(data if isinstance(data, bytes) else bytes(data))
        if self._progress:
            self._progress(records, len(data))

    def seal(self) -> tuple[str, int, str]:
        """Finish the zstd frame; return (sha256, stored bytes, raw sha256)."""
        try:
            if self._pending:
                self._compress.put(bytes(self._pending))
                self._pending.clear()
            self._compress.close()
            self._zstd.flush(zstandard.FLUSH_FRAME)
            self._zstd.close()
            if self._encryptor is not None:
                self._encryptor.close()
        finally:
            if self._encryptor is not None:
                self._encryptor.abort()  # a no-op once closed; ends its thread otherwise
            self._out.stage.close()
        return self._out.sha.hexdigest(), self._out.bytes, self._raw_sha.hexdigest()

    def abort(self) -> None:
        """The driver failed: stop both stages; the partial file is discarded."""
        if self._encryptor is not None:
            self._encryptor.abort()  # first: the stage's backlog then fails fast
        with contextlib.suppress(BaseException):
            self._compress.close()
        with contextlib.suppress(BaseException):
            self._out.stage.close()


class StoreSink:
    """The FileSink a driver backs up into: one per unit, collecting its files, and
    passing the quality chunks the driver hands it to `observe` (the suite's run)."""

    def __init__(
        self,
        store: ArtifactStore,
        technology: str,
        backup_id: str,
        *,
        level: int = DEFAULT_LEVEL,
        progress: Progress | None = None,
        observe: Observe | None = None,
    ) -> None:
        self._store = store
        self._technology = technology
        self._backup_id = backup_id
        self._level = level
        self._progress = progress
        self._observe = observe
        self.files: list[StoredFile] = []
        self.observed = False  # the driver handed over quality chunks for this unit

    def observe(self, chunk: QualityChunk) -> None:
        self.observed = True
        if self._observe is not None:
            self._observe(chunk)

    @contextmanager
    def open(
        self, name: str, *, format: str, meta: Mapping[str, Any] | None = None
    ) -> Iterator[PackagedWriter]:
        stored_name = name + SUFFIX
        recipients = self._store.keys.recipients
        # An encrypted file is stored under a random name: its own names a table or a
        # collection (the sealed manifest maps one to the other, tasks/sealed.py).
        stored_path = f"{secrets.token_hex(10)}{SUFFIX}.{crypto.AGE}" if recipients else None
        path = self._store.file_path(
            self._technology, self._backup_id, stored_path or stored_name
        )
        with self._store.open_write(path) as fh:
            writer = PackagedWriter(fh, self._level, self._progress, recipients)
            try:
                yield writer
            except BaseException:
                writer.abort()
                raise
            sha256, size, raw_sha256 = writer.seal()
        self.files.append(
            StoredFile(
                name=stored_name,
                format=format,
                compression=COMPRESSION,
                records=writer.records,
                bytes=size,
                sha256=sha256,
                raw_bytes=writer.raw_bytes,
                raw_sha256=raw_sha256,
                meta=dict(meta or {}),
                path=stored_path,
                encryption=crypto.AGE if recipients else None,
            )
        )


class _CountingReader:
    """Hashes and counts the compressed bytes on their way from the store; past `limit`
    bytes (the manifest's size) it reads no more, so a file that never ends (a link to
    /dev/zero planted in the store) fails its size check instead of hanging the reader."""

    def __init__(self, fh: IO[bytes], limit: int | None = None) -> None:
        self._fh = fh
        self._limit = limit
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        if self._limit is not None and self.bytes > self._limit:
            return b""
        if size is None or size < 0:
            size = _READ_SIZE  # never "all of it": see limit
        data = self._fh.read(size)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


class CheckedStream:
    """The decompressed content of a stored file, verified when read to its end.

    Reaching the end raises IntegrityError if the stored size or SHA-256, or the
    decompressed size or SHA-256, differ from what the manifest recorded. Decoding is
    bounded: the zstd window by MAX_WINDOW, the content by the manifest's raw_bytes
    (decompressing past it fails at once; a frame's own content size is not trusted),
    which `remaining` tells the driver's record readers (backstop.drivers.framing).
    """

    def __init__(
        self,
        fh: IO[bytes],
        file: StoredFile,
        label: str,
        progress: Progress | None,
        *,
        rehash_raw: bool = True,
        identities: list[Any] | None = None,
    ):
        self._rehash_raw = rehash_raw
        self._source = _CountingReader(fh, file.bytes)
        self._decryptor = _decryptor(self._source, file, label, identities)
        self._zstd = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
            self._decryptor or self._source, read_across_frames=True, closefd=False
        )
        self._file = file
        self._label = label
        self.name = label  # as a file's name: record readers say which file is wrong
        self._progress = progress
        self._raw_sha = hashlib.sha256()
        self._raw_bytes = 0
        self._done = False
        self.verified = False  # read to its end, and every checksum matched

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop a decryption thread that a reader left before the end."""
        if self._decryptor is not None:
            self._decryptor.close()

    @property
    def remaining(self) -> int:
        """Decompressed bytes left to read, as the manifest records the file's size."""
        return self._file.raw_bytes - self._raw_bytes

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        check_stop()
        want = size if size and size > 0 else _READ_SIZE
        try:
            # One byte beyond the recorded size is enough to tell the content is longer.
            data = self._zstd.read(max(1, min(want, self.remaining + 1)))
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{self._label}: cannot be decompressed ({exc})") from None
        except BadInputError:
            # "No identity opens it": unless the file itself was damaged (a changed byte
            # in its header reads as a key that does not match).
            self._done = True
            self._check_stored_bytes()
            raise
        if len(data) > self.remaining:
            self._done = True
            raise IntegrityError(
                f"{self._label}: decompresses to more than the {self._file.raw_bytes:,} bytes "
                "the manifest records (file altered)"
            )
        if data:
            if self._rehash_raw:
                self._raw_sha.update(data)
            self._raw_bytes += len(data)
            if self._progress:
                self._progress(0, len(data))
            return data
        self._check()
        return b""

    def _check(self) -> None:
        self._done = True
        rest = self._decryptor or self._source
        while rest.read(_READ_SIZE):  # bytes after the last frame count too
            pass
        if self._decryptor is not None:
            self._decryptor.close()
        self._check_stored_bytes()
        file = self._file
        if self._raw_bytes != file.raw_bytes or (
            self._rehash_raw and self._raw_sha.hexdigest() != file.raw_sha256
        ):
            raise IntegrityError(f"{self._label}: decompressed content differs from the manifest")
        self.verified = True

    def _check_stored_bytes(self) -> None:
        """The stored file's size and SHA-256 (read to its end first)."""
        while self._source.read(_READ_SIZE):
            pass
        file, source = self._file, self._source
        if source.bytes != file.bytes:
            raise IntegrityError(
                f"{self._label}: size is {source.bytes} bytes, the manifest says {file.bytes}"
            )
        if source.sha.hexdigest() != file.sha256:
            raise IntegrityError(f"{self._label}: SHA-256 differs from the manifest (file altered)")


def _decryptor(
    source: IO[bytes], file: StoredFile, label: str, identities: list[Any] | None
) -> crypto.Decryptor | None:
    if file.encryption is None:
        return None
    if file.encryption != crypto.AGE:
        raise IntegrityError(f"{label}: unknown encryption {file.encryption!r}")
    if not identities:
        raise BadInputError(
            f"{label} is encrypted: its content needs an identity (--identity FILE, or a "
            "${secret:BLOCK} reference)"
        )
    return crypto.Decryptor(source, identities, label)


class StoreSource:
    """The FileSource a driver restores from."""

    def __init__(
        self,
        store: ArtifactStore,
        technology: str,
        backup_id: str,
        progress: Progress | None = None,
    ) -> None:
        self._store = store
        self._technology = technology
        self._backup_id = backup_id
        self._progress = progress

    @property
    def can_decrypt(self) -> bool:
        return bool(self._store.keys.identities)

    def _path(self, file: StoredFile) -> str:
        # A file of an incremental chain names the backup it lives in.
        backup_id = file.meta.get("backup_id", self._backup_id)
        return self._store.file_path(self._technology, backup_id, file.path or file.name)

    def check_stored(self, file: StoredFile) -> None:
        """The stored bytes alone: their size and SHA-256 against the manifest (what
        can be proved of an encrypted file without its key)."""
        path = self._path(file)
        label = self._store.relative(path)
        with self._store.open_read(path) as fh:
            counted = _CountingReader(fh, file.bytes)
            while counted.read(_READ_SIZE):
                pass
        if counted.bytes != file.bytes:
            raise IntegrityError(
                f"{label}: size is {counted.bytes} bytes, the manifest says {file.bytes}"
            )
        if counted.sha.hexdigest() != file.sha256:
            raise IntegrityError(f"{label}: SHA-256 differs from the manifest (file altered)")

    def check_opens(self, file: StoredFile) -> None:
        """BadInputError unless this store's identities open the encrypted `file` (its
        header alone is read); IntegrityError if the file is damaged instead."""
        path = self._path(file)
        try:
            with self._store.open_read(path) as fh:
                crypto.check_identities_open(
                    fh, self._store.keys.identities, self._store.relative(path)
                )
        except BadInputError:
            self.check_stored(file)  # a damaged header reads as a key that does not match
            raise

    @contextmanager
    def open(self, file: StoredFile, *, rehash_raw: bool = True) -> Iterator[CheckedStream]:
        path = self._path(file)
        with self._store.open_read(path) as fh:
            stream = CheckedStream(
                fh,
                file,
                self._store.relative(path),
                self._progress,
                rehash_raw=rehash_raw,
                identities=self._store.keys.identities,
            )
            try:
                yield stream
            finally:
                stream.close()


class ReadBackSource:
    """The FileSource for reading a fresh backup once (the quality suite's pass): files
    are checked as a read-back is (see check_file), and those read to their end are
    remembered, so only the rest need a read of their own."""

    def __init__(self, source: StoreSource) -> None:
        self._source = source
        self.checked: set[str] = set()

    @contextmanager
    def open(self, file: StoredFile) -> Iterator[CheckedStream]:
        with self._source.open(file, rehash_raw=False) as stream:
            yield stream
            if stream.verified:
                self.checked.add(file.name)


def check_file(source: StoreSource, file: StoredFile, *, rehash_raw: bool = True) -> bool:
    """Read a stored file to its end, raising IntegrityError on any mismatch. False when
    only its stored bytes could be checked (size, SHA-256): an encrypted file read
    without an identity.

    `rehash_raw=False` is the read-back right after a backup: the stored bytes' SHA-256
    proves they are what was written, and zstd's frame checksum (verified while
    decoding) proves they decode to what the compressor was given, whose SHA-256 was
    taken on the way in; a second SHA-256 of the raw bytes would prove nothing more.
    """
    if file.encryption is not None and not source.can_decrypt:
        source.check_stored(file)
        return False
    with source.open(file, rehash_raw=rehash_raw) as stream:
        while stream.read(_READ_SIZE):
            pass
    return True


def check_decryptable(store: ArtifactStore, technology: str, chain: list[Any]) -> None:
    """Before anything is written: an encrypted backup (any link of its chain) needs an
    identity, and the one given must open it (one file's header is read). BadInputError
    otherwise, naming the recipients' fingerprints the manifest records."""
    encrypted = [link for link in chain if link.encryption is not None]
    if not encrypted:
        return
    for link in encrypted:
        recipients = ", ".join(link.encryption.recipients)
        if not store.keys.identities:
            raise BadInputError(
                f"backup {technology}/{link.backup_id} is encrypted (recipients {recipients}): "
                "reading it needs an identity (--identity FILE, or a ${secret:BLOCK} reference)"
            )
        if link.sealed is not None:  # its manifest stayed sealed: no identity opened it
            raise BadInputError(
                f"backup {technology}/{link.backup_id}: no identity given opens it "
                f"(recipients {recipients})"
            )
    link = encrypted[0]
    StoreSource(store, technology, link.backup_id).check_opens(link.files[0])
