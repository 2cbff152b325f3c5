"""Packaging: serialized records -> zstd -> SHA-256 -> store, and back.

Nothing here holds more than one compression block in memory: the writer hashes
and compresses what the driver hands it and passes it straight to the store's
file object; the reader decompresses as the driver reads and checks both digests
when the stream ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import zstandard

from backstop.drivers.contract import StoredFile
from backstop.drivers.errors import IntegrityError
from backstop.tasks.store import ArtifactStore

COMPRESSION = "zstd"
SUFFIX = ".zst"
DEFAULT_LEVEL = 3
# One zstd worker thread: compression overlaps with the driver's Python work (measured
# 25% faster backups on 2 cores) while memory stays bounded by zstd's job size.
ZSTD_THREADS = 1
_READ_SIZE = 1 << 20

Progress = Callable[[int, int], None]  # (records, raw bytes) just written or read


class _CountingWriter:
    """Hashes and counts the compressed bytes on their way to the store."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        self._fh.write(data)
        return len(data)

    def flush(self) -> None:
        self._fh.flush()


class PackagedWriter:
    """What a driver writes into: counts records, hashes raw bytes, compresses."""

    def __init__(self, fh: IO[bytes], level: int, progress: Progress | None) -> None:
        self._out = _CountingWriter(fh)
        self._zstd = zstandard.ZstdCompressor(level=level, threads=ZSTD_THREADS).stream_writer(
            self._out, closefd=False, write_return_read=True
        )
        self._raw_sha = hashlib.sha256()
        self._progress = progress
        self.raw_bytes = 0
        self.records = 0

    def write(self, data: bytes, records: int = 0) -> None:
        self._raw_sha.update(data)
        self.raw_bytes += len(data)
        self.records += records
        self._zstd.write(data)
        if self._progress:
            self._progress(records, len(data))

    def seal(self) -> tuple[str, int, str]:
        """Finish the zstd frame; return (sha256, stored bytes, raw sha256)."""
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._zstd.close()
        return self._out.sha.hexdigest(), self._out.bytes, self._raw_sha.hexdigest()


class StoreSink:
    """The FileSink a driver backs up into: one per unit, collecting its files."""

    def __init__(
        self,
        store: ArtifactStore,
        technology: str,
        backup_id: str,
        *,
        level: int = DEFAULT_LEVEL,
        progress: Progress | None = None,
    ) -> None:
        self._store = store
        self._technology = technology
        self._backup_id = backup_id
        self._level = level
        self._progress = progress
        self.files: list[StoredFile] = []

    @contextmanager
    def open(
        self, name: str, *, format: str, meta: Mapping[str, Any] | None = None
    ) -> Iterator[PackagedWriter]:
        stored_name = name + SUFFIX
        path = self._store.file_path(self._technology, self._backup_id, stored_name)
        with self._store.open_write(path) as fh:
            writer = PackagedWriter(fh, self._level, self._progress)
            yield writer
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
            )
        )


class _CountingReader:
    """Hashes and counts the compressed bytes on their way from the store."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


class CheckedStream:
    """The decompressed content of a stored file, verified when read to its end.

    Reaching the end raises IntegrityError if the stored size or SHA-256, or the
    decompressed size or SHA-256, differ from what the manifest recorded.
    """

    def __init__(self, fh: IO[bytes], file: StoredFile, label: str, progress: Progress | None):
        self._source = _CountingReader(fh)
        self._zstd = zstandard.ZstdDecompressor().stream_reader(
            self._source, read_across_frames=True, closefd=False
        )
        self._file = file
        self._label = label
        self._progress = progress
        self._raw_sha = hashlib.sha256()
        self._raw_bytes = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            data = self._zstd.read(size if size and size > 0 else _READ_SIZE)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{self._label}: cannot be decompressed ({exc})") from None
        if data:
            self._raw_sha.update(data)
            self._raw_bytes += len(data)
            if self._progress:
                self._progress(0, len(data))
            return data
        self._check()
        return b""

    def _check(self) -> None:
        self._done = True
        while self._source.read(_READ_SIZE):  # bytes after the last frame count too
            pass
        file, source = self._file, self._source
        if source.bytes != file.bytes:
            raise IntegrityError(
                f"{self._label}: size is {source.bytes} bytes, the manifest says {file.bytes}"
            )
        if source.sha.hexdigest() != file.sha256:
            raise IntegrityError(f"{self._label}: SHA-256 differs from the manifest (file altered)")
        if self._raw_bytes != file.raw_bytes or self._raw_sha.hexdigest() != file.raw_sha256:
            raise IntegrityError(f"{self._label}: decompressed content differs from the manifest")


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

    @contextmanager
    def open(self, file: StoredFile) -> Iterator[CheckedStream]:
        path = self._store.file_path(self._technology, self._backup_id, file.name)
        with self._store.open_read(path) as fh:
            yield CheckedStream(fh, file, self._store.relative(path), self._progress)


def check_file(source: StoreSource, file: StoredFile) -> None:
    """Read a stored file to its end, raising IntegrityError on any mismatch."""
    with source.open(file) as stream:
        while stream.read(_READ_SIZE):
            pass
