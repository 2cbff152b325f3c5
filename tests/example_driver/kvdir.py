"""A worked example of a third-party driver: `kvdir`, a folder of key files.

A source or target is `kvdir:///absolute/folder`; every regular file in it is a key,
its bytes the value. One unit per folder; the backup file is a sequence of
(key length, value length, key, value) records. It implements the whole contract,
declares a small data-quality suite (keys present, plain file names, unique), and is
installed through the `backstop.drivers` entry point by tests/test_example_driver.py.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from backstop.drivers.contract import (
    Capabilities,
    Consistency,
    ConsistencyKind,
    Driver,
    FileSink,
    FileSource,
    QualityChunk,
    QualityPart,
    RestoreMode,
    RestorePlan,
    RestoreResult,
    StoredUnit,
    TargetCheck,
    Unit,
    UnitResult,
)
from backstop.drivers.errors import BadInputError, ErrorKind, PermanentError
from backstop.drivers.framing import RecordReader
from backstop.drivers.identity import file_identity
from backstop.drivers.quality import ColumnRule, QualitySuite

_HEADER = struct.Struct("<HI")
MAX_VALUE = 64 << 20  # what one record may claim: bounds the memory a crafted file takes


def _folder(url: str) -> Path:
    return Path(url.removeprefix("kvdir://"))


def _digest(items) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(items):
        digest.update(_HEADER.pack(len(key), len(value)) + key + value)
    return digest.hexdigest()


def read_records(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """The (key, value) records of a backup file, read to its end (which checks its
    checksums). A stored file may be crafted: every length is checked before it is
    read, and every key must be a plain file name inside the target folder."""
    reader = RecordReader(stream)
    while not reader.at_end():
        at = reader.offset
        key_len, value_len = _HEADER.unpack(reader.take(_HEADER.size, "record header", 6))
        key = reader.text(key_len, "key", 0xFFFF)
        if key in ("", ".", "..") or "/" in key or "\x00" in key:
            raise reader.fail(f"unsafe key {key!r}", at)
        yield key, reader.take(value_len, f"value of {key}", MAX_VALUE)


def _files(folder: Path) -> dict[bytes, bytes]:
    return {p.name.encode(): p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class KvDirDriver(Driver):
    name = "kvdir"
    version = "0.1.0"
    capabilities = Capabilities(consistency=(ConsistencyKind.NONE,), modes=("logical",))
    url_schemes = ("kvdir",)
    single_url = "one folder per backup"
    # A plugin's suite is declared the same way as the built-in drivers' are.
    quality_suite = QualitySuite(
        rules=(ColumnRule("key", not_null=True, regex=r"^[^/\x00]+$"),), unique=(("key",),)
    )

    def classify(self, exc: BaseException) -> ErrorKind:
        # A busy disk may clear up; anything else will not.
        return ErrorKind.TRANSIENT if isinstance(exc, TimeoutError) else ErrorKind.PERMANENT

    def identity(self, url: str) -> str:
        # The folder as it is on disk (symlinks and ./ resolved): what a drill compares.
        return file_identity("kvdir", _folder(url))

    def plan_backup(self, sources: Sequence[str], options: Mapping[str, Any]) -> list[Unit]:
        folder = _folder(sources[0])
        if not folder.is_dir():
            raise PermanentError(f"{folder} is not a folder")
        return [Unit(name="keys", source=sources[0])]

    def backup_unit(self, unit: Unit, sink: FileSink) -> UnitResult:
        items = _files(_folder(unit.source))
        with sink.open("keys.kv", format="kvdir/1") as out:
            for key, value in items.items():
                out.write(_HEADER.pack(len(key), len(value)) + key + value, 1)
        return UnitResult(records=len(items), meta={"digest": _digest(items.items())})

    def consistency(self, quiesce_handle, units: Sequence[StoredUnit]) -> Consistency:
        return Consistency(
            kind=ConsistencyKind.NONE, warnings=["files are read one by one, not frozen"]
        )

    def prepare_restore(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        folder = _folder(targets[0])
        if not folder.is_dir():
            raise BadInputError(f"target folder {folder} does not exist")
        if plan.mode is RestoreMode.FAIL_IF_EXISTS and any(folder.iterdir()):
            raise BadInputError(f"target folder {folder} is not empty; choose a --mode")
        if plan.mode is RestoreMode.MERGE:
            # What the target held before: a merge keeps those keys as they are, and
            # verification accepts them (a toy: a real driver keeps a watermark).
            return {"keys": sorted(p.name for p in folder.iterdir() if p.is_file())}
        return None

    def restore_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> RestoreResult:
        folder = _folder(target)
        if plan.mode is RestoreMode.OVERWRITE:
            for path in folder.iterdir():
                path.unlink()
        written = skipped = 0
        with source.open(unit.files[0]) as stream:
            for key, value in read_records(stream):
                path = folder / key
                if plan.mode is RestoreMode.MERGE and path.exists():
                    skipped += 1
                    continue
                path.write_bytes(value)
                written += 1
        return RestoreResult(records_written=written, records_skipped=skipped)

    def verify_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        if plan.mode is RestoreMode.MERGE:
            return self._verify_merge(unit, _folder(target), source, plan)
        items = _files(_folder(target))
        problems = []
        if len(items) != unit.records:
            problems.append(f"{len(items)} keys in the target, {unit.records} in the backup")
        elif _digest(items.items()) != unit.meta["digest"]:
            problems.append("the keys' digest differs from the backup's")
        return TargetCheck(unit=unit.name, ok=not problems, records=len(items), problems=problems)

    def _verify_merge(
        self, unit: StoredUnit, folder: Path, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        """After a merge every backed-up key is in the target: as backed up, or as the
        target held it before (a merge never changes what the target holds)."""
        kept = set(plan.before.get("keys", ()))
        missing = differing = 0
        with source.open(unit.files[0]) as stream:
            for key, value in read_records(stream):
                path = folder / key
                if not path.is_file():
                    missing += 1
                elif key not in kept and path.read_bytes() != value:
                    differing += 1
        problems = [f"{missing} backed-up keys are missing"] * bool(missing) + [
            f"{differing} keys differ from the backup"
        ] * bool(differing)
        return TargetCheck(unit=unit.name, ok=not problems, records=unit.records, problems=problems)

    # -- data quality ---------------------------------------------------------------
    def quality_parts(self, unit: StoredUnit) -> dict[str, QualityPart]:
        return {unit.name: QualityPart(records=unit.records)}

    def quality_chunks(self, unit: StoredUnit, source: FileSource) -> Iterator[QualityChunk]:
        with source.open(unit.files[0]) as stream:
            keys = [key for key, _ in read_records(stream)]  # a toy: real drivers chunk
        yield QualityChunk(part=unit.name, columns={"key": keys})

    def target_quality_chunks(
        self, unit: StoredUnit, target: str, plan: RestorePlan
    ) -> Iterator[QualityChunk]:
        keys = [p.name for p in sorted(_folder(target).iterdir()) if p.is_file()]
        yield QualityChunk(part=unit.name, columns={"key": keys})
