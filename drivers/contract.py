"""The driver contract: what a technology driver declares and implements.

A driver is plain Python (no Prefect). The tasks layer calls it in this order:

    identity: identity (per resolved URL: where it points, to compare places)
    backup:  check_urls -> plan_backup -> quiesce -> backup_unit (per unit, in
             parallel) -> release (always) -> consistency
    restore: check_urls -> restore_parts -> prepare_restore (all targets, before
             any write) -> [overwrite: absent_parts, safety backup] -> restore_unit
             (per unit, retried on transient errors) -> verify_unit (per unit)
             [failed overwrite: drop_parts(absent parts), restore the safety backup]
    quality: sink.observe from backup_unit (the records' columns as they are
             packaged), then quality_parts; or, when a unit observes nothing,
             quality_chunks (the packaged backup read back); target_quality_chunks
             (the restored target)

Every URL a driver method receives is resolved: the `${env:NAME}` and
`${secret:BLOCK}` references that requests carry in place of secrets (anywhere in a
URL: password, query, host) are expanded by the tasks layer before the call, and
each secret is registered for masking. A driver never sees a reference, and never
needs Prefect to resolve one. The units `plan_backup` returns must name their source
by one of the URLs it was given (the tasks layer puts the reference form back before
a unit travels on as a task parameter).

Data never passes through the driver as a whole: `backup_unit` pushes serialized
records into a `FileSink` (which compresses, hashes and writes them as they come),
and `restore_unit` pulls them from a `FileSource` stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO, ClassVar, Literal, Protocol

from pydantic import BaseModel, Field

from backstop.drivers.errors import ErrorKind
from backstop.drivers.quality import QualitySuite


class RestoreMode(StrEnum):
    FAIL_IF_EXISTS = "fail-if-exists"  # refuse a target that holds data; touch nothing
    OVERWRITE = "overwrite"  # replace what the target holds with the backup
    MERGE = "merge"  # add what the target lacks; keep what it has


class ConsistencyKind(StrEnum):
    SNAPSHOT = "snapshot"  # one point in time, read inside one snapshot/transaction
    OPLOG = "oplog"  # a fuzzy copy made consistent by replaying a log slice to one point
    QUIESCED = "quiesced"  # writes were blocked while the copy was taken
    CONVERGED = "converged"  # re-read until nothing changed between two passes
    NONE = "none"  # fuzzy: writes may have happened during the copy


@dataclass(frozen=True)
class Capabilities:
    consistency: tuple[ConsistencyKind, ...]
    modes: tuple[str, ...] = ("logical",)
    incremental: bool = False
    selective_restore: bool = False
    point_in_time: bool = False
    restore_modes: tuple[RestoreMode, ...] = tuple(RestoreMode)
    rename: bool = False  # restore under other names (RestorePlan.rename)
    # Each unit is consistent on its own (its own point: a shard), so a failed backup
    # keeps the units it finished and `backup --resume` takes only the others
    # (tasks/resume.py). Not for units read at one shared point (a cluster time).
    resumable: bool = False


class StoredFile(BaseModel):
    """One data file of a backup, as the manifest records it."""

    name: str  # path relative to the backup folder
    format: str  # the driver's serialization, e.g. "schemaless-cells/1"
    compression: str = "zstd"
    records: int
    bytes: int  # stored (compressed) size
    sha256: str  # of the stored bytes
    raw_bytes: int  # uncompressed size
    raw_sha256: str  # of the uncompressed content
    meta: dict[str, Any] = Field(default_factory=dict)
    # Where the file is stored, relative to the backup folder, when not under `name`:
    # an encrypted backup stores its files under opaque names (tasks/sealed.py).
    path: str | None = None
    # "age": the compressed bytes were encrypted (tasks/crypto.py); bytes and sha256 are
    # then the encrypted file's, checkable without the key.
    encryption: Literal["age"] | None = None


class StoredUnit(BaseModel):
    """One independently backed-up part (a shard, a collection, a tree)."""

    name: str
    source: str  # redacted URL
    records: int
    point: dict[str, Any] = Field(default_factory=dict)  # this unit's consistency point
    meta: dict[str, Any] = Field(default_factory=dict)
    files: list[StoredFile] = Field(default_factory=list)


@dataclass
class Unit:
    """A unit of backup work, as planned by the driver."""

    name: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitResult:
    """What `backup_unit` reports besides its files."""

    records: int
    point: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Consistency:
    kind: ConsistencyKind
    point: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestorePlan:
    """What a restore was asked to do, beyond which backup and where."""

    mode: RestoreMode = RestoreMode.FAIL_IF_EXISTS
    include: tuple[str, ...] = ()  # only these parts (driver-specific patterns)
    until: str | None = None  # a point in time within the backup chain
    rename: tuple[tuple[str, str], ...] = ()  # (source pattern, target pattern), driver-specific
    options: Mapping[str, Any] = field(default_factory=dict)  # driver options (--option K=V)
    # What prepare_restore saw in the targets before anything was written (JSON-able,
    # driver-specific, e.g. ZooKeeper's zxid). Every attempt of restore_unit, retries
    # included, gets the same, so a retry tells what an earlier attempt wrote from what
    # the target held before the restore began.
    before: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RestoreResult:
    records_written: int
    records_skipped: int = 0


@dataclass
class TargetCheck:
    """The verdict of comparing a restored target with the backup."""

    unit: str
    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)


@dataclass
class QualityChunk:
    """Some records of one part (a table, a collection, a tree) as columns, for the
    data-quality suite of the driver's technology; chunks keep memory bounded."""

    part: str
    columns: dict[str, list[Any]]


@dataclass
class QualityPart:
    """What the quality suite knows about a part before reading it: how many records
    the source held, and upper bounds some columns must respect."""

    records: int | None = None
    max_values: dict[str, int] = field(default_factory=dict)


class FileWriter(Protocol):
    def write(self, data: bytes, records: int = 0) -> None:
        """Append serialized bytes holding `records` whole records."""


class FileSink(Protocol):
    def open(
        self, name: str, *, format: str, meta: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[FileWriter]:
        """A new data file of the backup; closing it seals size, count and checksums."""

    def observe(self, chunk: QualityChunk) -> None:
        """Hand the quality suite the columns of records just written (optional).

        A driver with a suite may call it as it reads, so the suite runs in the same
        pass as the packaging and the backup's validation need not parse the stored
        files again. Once it has observed one chunk of a unit, it must observe every
        record of that unit, as `quality_chunks` would read them back: the suite's
        verdicts then stand for the stored files, whose read-back checks only their
        bytes. A unit that observes nothing gets the read-back pass. The chunk's lists
        are handed over: the suite checks them later, on its own thread, so the driver
        starts new lists rather than clearing or refilling these."""


class FileSource(Protocol):
    def open(self, file: StoredFile) -> AbstractContextManager[BinaryIO]:
        """The file's decompressed content; reading past its end checks its checksums."""


def run_to_end(reading: Generator[Any, None, TargetCheck]) -> TargetCheck:
    """What a `verify_with_quality` reading returns, its chunks left unused (a driver's
    `verify_unit` may be just that)."""
    while True:
        try:
            next(reading)
        except StopIteration as end:
            return end.value


def _check_url_syntax(url: str, role: str) -> None:
    """What no driver's URL may be: unparseable (an unclosed IPv6 bracket), or holding
    NUL or line breaks. Bad input, said before anything connects."""
    from urllib.parse import urlsplit

    from backstop.drivers.errors import BadInputError
    from backstop.drivers.redact import check_userinfo, redact_url

    if any(c in url for c in "\x00\r\n"):
        raise BadInputError(f"{role} URL contains a NUL or line break: {redact_url(url)!r}")
    check_userinfo(url)
    try:
        netloc = urlsplit(url).netloc
    except ValueError as exc:
        raise BadInputError(f"{role} {redact_url(url)!r} is not a valid URL: {exc}") from None
    for host in netloc.rpartition("@")[2].split(","):  # zk:// and mongodb:// list hosts
        port = host.rpartition(":")[2] if ":" in host else ""
        if port.isdecimal() and not 0 < int(port) < 65536:
            raise BadInputError(f"{role} {redact_url(url)!r}: port {port} is out of range")


class Driver(ABC):
    """One technology. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    version: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    url_schemes: ClassVar[tuple[str, ...]]
    single_url: ClassVar[str | None] = None  # why one URL serves, when only one may be given
    # What must hold of the records (drivers/quality.py); None: the read-back alone.
    # A driver with a suite implements quality_parts and the two chunk readers.
    quality_suite: ClassVar[QualitySuite | None] = None
    # The options (--option K=V) the driver reads, name -> what it does. Any other is
    # refused (check_options): a typo would otherwise be ignored silently, and a secret
    # given as an option would be stored with the run's parameters and the manifest.
    backup_options: ClassVar[Mapping[str, str]] = {}
    restore_options: ClassVar[Mapping[str, str]] = {}

    # -- errors -------------------------------------------------------------------
    @abstractmethod
    def classify(self, exc: BaseException) -> ErrorKind:
        """Transient (retry) or permanent (fail now), for an exception of the client."""

    # -- input --------------------------------------------------------------------
    def check_restore_features(
        self, include: Sequence[str], until: str | None, rename: Mapping[str, str]
    ) -> None:
        """A restore asking for what this driver's capabilities lack is bad input (the
        CLI asks before Prefect starts, the flow again for other callers)."""
        from backstop.drivers.errors import BadInputError

        caps = self.capabilities
        if include and not caps.selective_restore:
            raise BadInputError(f"{self.name} does not support --include (selective restore)")
        if until and not caps.point_in_time:
            raise BadInputError(f"{self.name} does not support --until (point-in-time restore)")
        if rename and not caps.rename:
            raise BadInputError(f"{self.name} does not support --rename")

    def check_options(self, options: Mapping[str, Any], operation: str) -> None:
        """Raise BadInputError naming every option this driver does not read for
        `operation` ("backup" or "restore"), with the ones it knows."""
        from backstop.drivers.errors import BadInputError

        known = self.backup_options if operation == "backup" else self.restore_options
        unknown = sorted(str(key) for key in options if key not in known)
        if unknown:
            listed = ", ".join(f"{k} ({what})" for k, what in sorted(known.items()))
            raise BadInputError(
                f"{self.name} {operation} does not know the option(s) {', '.join(unknown)}; "
                f"known: {listed or 'none'}"
            )

    def check_urls(self, urls: Sequence[str], role: str) -> None:
        """Raise BadInputError for a URL this driver cannot use (`role`: source/target)."""
        from backstop.drivers.errors import BadInputError
        from backstop.drivers.redact import redact_url

        if not urls:
            raise BadInputError(f"{self.name} needs at least one --{role}")
        if self.single_url and len(urls) != 1:
            raise BadInputError(f"{self.name} takes one --{role} ({self.single_url})")
        for url in urls:
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if not scheme.startswith(self.url_schemes):
                raise BadInputError(
                    f"{self.name} {role} {redact_url(url)!r} is not a URL this driver "
                    f"understands (expected {' or '.join(s + '://' for s in self.url_schemes)})"
                )
            _check_url_syntax(url, role)

    def identity(self, url: str) -> str:
        """Where a resolved URL points, the same text however it is spelled (aliases,
        `./`, symlinks, host names), as `<kind>://<server>[/<path>]` so that a place
        inside another has the other's identity as a path prefix. Compared, never
        parsed, by the flows: a drill never writes into one of its sources, and two
        targets of one restore are never one place. Never holds a password.
        The default is the URL without credentials or query, normalized."""
        from backstop.drivers.identity import normalized_url

        return normalized_url(url)

    def reaches_same(self, url_a: str, url_b: str) -> bool:
        """Asked of the servers, for two resolved URLs whose identities differ: do they
        still reach one place (a server known by several addresses that its identity
        cannot tell apart)? The default trusts identities. Nothing may be written."""
        return False

    def place_name(self, index: int, role: str) -> str:
        """How errors name the URL at `index` among a command's URLs of one `role`
        (source/target), so that two URLs whose redacted forms are alike (only the
        password differs) are still told apart. A driver whose URLs are units of its
        own (shards) names them as its units are named."""
        return f"{role} {index + 1}"

    # -- backup -------------------------------------------------------------------
    @abstractmethod
    def plan_backup(self, sources: Sequence[str], options: Mapping[str, Any]) -> list[Unit]:
        """Split the backup into units that can run in parallel."""

    def quiesce(
        self, sources: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Stop writes, or fix the point every unit will read at, if the technology
        needs it (and the backup's `options` allow it); return a JSON-able handle for
        `release`. The flow hands the handle to every unit as `unit.options["quiesce"]`."""
        return None

    def release(self, handle: dict[str, Any] | None, sources: Sequence[str]) -> None:
        """Undo `quiesce`. Called on every path, failure included."""
        return None

    @abstractmethod
    def backup_unit(self, unit: Unit, sink: FileSink) -> UnitResult:
        """Stream one unit's records into files of `sink`."""

    @abstractmethod
    def consistency(
        self, quiesce_handle: dict[str, Any] | None, units: Sequence[StoredUnit]
    ) -> Consistency:
        """What the finished backup can honestly claim."""

    # -- restore ------------------------------------------------------------------
    @abstractmethod
    def prepare_restore(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> Mapping[str, Any] | None:
        """Check every target before anything is written; refuse with BadInputError.
        May return what a retried `restore_unit` needs to know about the targets' state
        before the first attempt; the flow hands it over as `plan.before`."""

    @abstractmethod
    def restore_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> RestoreResult:
        """Load one unit into its target. A transient failure retries it: a retry must
        end as the first attempt would have (what the earlier attempt wrote counts as
        done, what the target held before stays as each mode says)."""

    @abstractmethod
    def verify_unit(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> TargetCheck:
        """Compare the target with the backup: counts and digests."""

    def safety_backup_options(
        self, units: Sequence[StoredUnit], targets: Sequence[str], plan: RestorePlan
    ) -> dict[str, Any] | None:
        """Before an overwrite: the backup options that capture what the restore will
        replace in the targets, or None when they hold none of it (nothing to lose).
        The default backs up the targets whole."""
        return {}

    # -- the parts a restore writes (selection checks; exact rollback) --------------------
    def restore_parts(
        self, units: Sequence[StoredUnit], source: FileSource, plan: RestorePlan
    ) -> list[str] | None:
        """The parts (tables, collections, subtrees: driver-specific names, after
        `plan.include` and `plan.rename`) the restore writes into its targets; None when
        the driver cannot name them. Writes nothing. The flow refuses an --include that
        selects no part (bad input), and before an overwrite asks `absent_parts`
        which of them the targets lack, so that a failed overwrite's rollback removes
        what the restore created (`drop_parts`) besides restoring the safety backup."""
        return None

    def absent_parts(self, targets: Sequence[str], parts: Sequence[str]) -> list[str]:
        """Those of `parts` that the targets do not hold at all (the restore creates them)."""
        return []

    def drop_parts(self, targets: Sequence[str], parts: Sequence[str]) -> None:
        """Remove these parts (named as `restore_parts` names them) from the targets,
        whole; a part already absent is no error."""
        if parts:
            raise NotImplementedError(f"{self.name} cannot remove the parts {list(parts)}")

    # -- data quality (optional) ----------------------------------------------------
    def quality_parts(self, unit: StoredUnit) -> dict[str, QualityPart]:
        """The parts of a backed-up unit the quality suite checks, with what the source
        held; a technology without a suite raises NotImplementedError."""
        raise NotImplementedError

    def quality_chunks(self, unit: StoredUnit, source: FileSource) -> Iterator[QualityChunk]:
        """The backup's records in column chunks (reading each file to its end, which
        checks its checksums)."""
        raise NotImplementedError

    def target_quality_chunks(
        self, unit: StoredUnit, target: str, plan: RestorePlan
    ) -> Iterator[QualityChunk]:
        """The restored target's records in the same column chunks."""
        raise NotImplementedError

    def verify_with_quality(
        self, unit: StoredUnit, target: str, source: FileSource, plan: RestorePlan
    ) -> Generator[QualityChunk, None, TargetCheck]:
        """`verify_unit` and `target_quality_chunks` in one read of the target: yields
        the target's quality chunks as it reads them and returns what `verify_unit`
        would (the generator's return value), once consumed to its end. Optional: the
        default raises NotImplementedError when called, and the tasks layer then reads
        the target twice (verify_unit, then target_quality_chunks)."""
        raise NotImplementedError

    def unit_connections(self, step: str, url: str) -> int:
        """The most connections to `url`'s server that one unit's `step` holds at once:
        "backup", "restore", "verify", "verify+quality" (verify_with_quality) or
        "quality". The tasks layer occupies as many slots of the host's concurrency
        limit (tasks/host_limits.py). One, unless the driver reads through several."""
        return 1

    def describe(self) -> dict[str, Any]:
        caps = self.capabilities
        return {
            "name": self.name,
            "version": self.version,
            "consistency": [k.value for k in caps.consistency],
            "modes": list(caps.modes),
            "incremental": caps.incremental,
            "selective_restore": caps.selective_restore,
            "point_in_time": caps.point_in_time,
        }
