"""Data-quality suites: Great Expectations on the records of a backup and of a restored
target, chunk by chunk, plus the checks that span a whole part (uniqueness, parents,
counts) kept on disk so memory stays bounded however large the part.

Each driver declares its technology's suite (drivers/<tech>/quality.py, through
drivers/quality.py's QualitySuite) and supplies the records as column chunks; this
module runs any declared suite, a plugin driver's included.

Great Expectations runs each chunk (an ephemeral context, no project folder) for the
per-record expectations, in a process of its own (tasks/gx_worker.py): its import and
its work use the second core while this process reads and packages. Uniqueness is a property of the whole part, which a chunk
cannot see, so it is KeyLedger's: 64-bit hashes of every key, on disk, compared one
bucket at a time.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backstop.drivers.contract import Driver, QualityChunk, QualityPart, StoredUnit
from backstop.drivers.quality import ColumnRule, QualitySuite
from backstop.tasks.gx_client import validator
from backstop.tasks.gx_worker import Expectation
from backstop.tasks.manifest import QualityResult

_SAMPLE = 5
_BOUND_FRAME = 1_000_000  # values per Great Expectations run of a deferred rule (~8 MB)
_HELD_ROWS = 50_000  # records of first chunks held for their bounds, all parts together


# -- whole-part checks on disk ------------------------------------------------------------
class KeyLedger:
    """64-bit hashes of a part's keys, spilled to BUCKETS files by their top bits, so
    duplicates and missing keys are found one bucket (1/64 of the keys) at a time.

    Hashes wait in memory until the ledgers sharing a LedgerBudget (one suite run's:
    every part and key of a unit) hold BUFFERED of them (1 MiB) together, and a unit
    that never holds as many never touches the disk: a small shard's 50 keys had made
    up to 50 files per ledger, the largest cost of a small shard's backup (py-spy,
    256 shards).
    """

    BUCKET_BITS = 6
    BUCKETS = 1 << BUCKET_BITS
    BUFFERED = 1 << 17

    def __init__(self, folder: Path, name: str, budget: LedgerBudget | None = None) -> None:
        self._paths = [folder / f"{name}-{i:02d}.u64" for i in range(self.BUCKETS)]
        self._waiting: list[np.ndarray] = []
        self._budget = budget if budget is not None else LedgerBudget()
        self._budget.ledgers.append(self)
        self.count = 0

    def add(self, hashes: np.ndarray) -> None:
        """Record 64-bit key hashes (see key_hashes)."""
        if not len(hashes):
            return
        self._waiting.append(hashes)
        self.count += len(hashes)
        self._budget.waiting += len(hashes)
        if self._budget.waiting >= self.BUFFERED:
            self._budget.spill()

    def _spill(self) -> None:
        hashes = self._in_memory()
        self._waiting = []
        if not len(hashes):
            return
        buckets = self._buckets_of(hashes)
        order = np.argsort(buckets, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(buckets, minlength=self.BUCKETS))))
        hashes = hashes[order]
        for i in np.flatnonzero(np.diff(bounds)):
            with open(self._paths[i], "ab") as out:
                hashes[bounds[i] : bounds[i + 1]].tofile(out)

    def _buckets_of(self, hashes: np.ndarray) -> np.ndarray:
        return (hashes >> np.uint64(64 - self.BUCKET_BITS)).astype(np.intp)

    def _in_memory(self) -> np.ndarray:
        if len(self._waiting) > 1:
            self._waiting = [np.concatenate(self._waiting)]
        return self._waiting[0] if self._waiting else np.empty(0, np.uint64)

    def bucket(self, i: int) -> np.ndarray:
        path = self._paths[i]
        on_disk = np.fromfile(path, dtype=np.uint64) if path.exists() else np.empty(0, np.uint64)
        waiting = self._in_memory()
        if not len(waiting):
            return on_disk
        return np.concatenate((on_disk, waiting[self._buckets_of(waiting) == i]))

    def duplicates(self) -> int:
        found = 0
        for i in range(self.BUCKETS):
            values = np.sort(self.bucket(i))
            found += int(np.count_nonzero(values[1:] == values[:-1]))
        return found

    def missing_from(self, other: KeyLedger) -> int:
        """How many of these keys `other` lacks."""
        return sum(
            int(np.count_nonzero(~np.isin(self.bucket(i), other.bucket(i))))
            for i in range(self.BUCKETS)
        )


class LedgerBudget:
    """The hashes that a group of ledgers hold in memory, counted together: past
    KeyLedger.BUFFERED, every ledger of the group spills to its files."""

    def __init__(self) -> None:
        self.ledgers: list[KeyLedger] = []
        self.waiting = 0

    def spill(self) -> None:
        for ledger in self.ledgers:
            ledger._spill()
        self.waiting = 0


def key_hashes(frame: Any) -> np.ndarray:
    """A 64-bit hash per row of `frame`'s columns, computed by pandas in C."""
    import pandas as pd

    return pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)


# -- suites -------------------------------------------------------------------------------
def suite_of(technology: str) -> QualitySuite | None:
    """The suite the technology's driver declares (drivers/quality.py), if any."""
    from backstop.drivers.registry import get_driver

    return get_driver(technology).quality_suite


def checked_parts(driver: Driver, unit: StoredUnit) -> dict[str, QualityPart] | None:
    """The parts of a unit the driver's suite checks; None when its driver declares no
    suite, or this unit's kind has none (e.g. ZooKeeper's physical snapshots)."""
    if driver.quality_suite is None:
        return None
    try:
        return driver.quality_parts(unit)
    except NotImplementedError:
        return None


def expectations(
    suite: QualitySuite, part: QualityPart, *, bounded: bool = True
) -> list[Expectation]:
    """The suite's per-record rules as Great Expectations expectations for one part, by
    class name and arguments (the validator builds them, tasks/gx_worker.py).
    `bounded=False` leaves out the rules whose bound is only known once the part is
    read (see `deferred_rules`)."""
    out: list[Expectation] = []
    for rule in suite.rules:
        if rule.not_null:
            out.append(("ExpectColumnValuesToNotBeNull", {"column": rule.column}))
        if rule.regex is not None:
            out.append(
                ("ExpectColumnValuesToMatchRegex", {"column": rule.column, "regex": rule.regex})
            )
        if bounded or not rule.max_value_of:
            out += _between(rule, part)
    return out


def deferred_rules(suite: QualitySuite) -> list[ColumnRule]:
    """The rules bounded by a value of the part (QualityPart.max_values, e.g. the
    Schemaless watermark) that the backup learns once it has read the part."""
    return [rule for rule in suite.rules if rule.max_value_of]


def _between(rule: ColumnRule, part: QualityPart) -> list[Expectation]:
    upper = part.max_values.get(rule.max_value_of) if rule.max_value_of else None
    if rule.min_value is None and upper is None:
        return []
    kwargs = {"column": rule.column, "min_value": rule.min_value, "max_value": upper}
    return [("ExpectColumnValuesToBeBetween", kwargs)]


# -- running ------------------------------------------------------------------------------
def _validate(columns: dict[str, Any], suite: list[Expectation]) -> list[dict[str, Any]]:
    """Great Expectations on one chunk's columns (only those the expectations name):
    in the validator process, so it runs beside the reading (tasks/gx_worker.py)."""
    if not suite:
        return []
    named = {kwargs["column"] for _, kwargs in suite}
    return validator().validate({c: v for c, v in columns.items() if c in named}, suite)


@dataclass
class _PartState:
    spec: QualityPart
    suite: Any
    ledgers: dict[str, KeyLedger]
    spills: dict[str, Path] = field(default_factory=dict)  # column -> its values, on disk
    records: int = 0
    last: Any = None
    out_of_order: int = 0
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The packaging pass's first chunk of the part, its Great Expectations call waiting
    # for the part's bounds: a part of one chunk (a small shard's table) is then
    # validated once, bounds included, instead of twice (SuiteRun.add).
    held: QualityChunk | None = None
    chunks: int = 0


class SuiteRun:
    """One unit's run of its technology's suite, a chunk at a time: `add` each chunk
    (Great Expectations on it, its keys into the on-disk ledgers), then `verdicts`.

    The read-back pass knows every part's QualityPart before it reads (`parts`). The
    backup's packaging pass (`bounds_later=True`) learns them only once the driver is
    done: the rules bounded by a value of the part (the Schemaless watermark) keep their
    column on disk, and `verdicts` checks it against the bound. A part's first chunk waits
    for its bounds, so that a part of one chunk is validated in one call; held chunks
    hold at most _HELD_ROWS records in all, so memory stays about two chunks however many
    parts. close() removes the temporary folder.
    """

    def __init__(
        self,
        technology: str,
        unit: str = "",
        parts: dict[str, QualityPart] | None = None,
        *,
        bounds_later: bool = False,
    ) -> None:
        suite = suite_of(technology)
        if suite is None:
            raise ValueError(f"{technology} declares no data-quality suite")
        self._technology = technology
        self._suite = suite
        self._unit = unit
        self._parts = dict(parts or {})
        self._bounds_later = bounds_later
        self._folder = tempfile.TemporaryDirectory(prefix="backstop-quality-")
        self._ledgers = LedgerBudget()  # every part's ledgers: memory stays one buffer
        self._states: dict[str, _PartState] = {}
        self._held_rows = 0  # in the parts' held first chunks (add)
        self.records = 0  # in every chunk added so far

    def __enter__(self) -> SuiteRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._folder.cleanup()

    def add(self, chunk: QualityChunk) -> None:
        """Check one chunk of records."""
        import pandas as pd

        state = self._state_of(chunk.part)
        frame = pd.DataFrame(chunk.columns)
        state.records += len(frame)
        self.records += len(frame)
        state.chunks += 1
        if self._bounds_later and state.chunks == 1 and self._held_rows + len(frame) <= _HELD_ROWS:
            # Held until the part's bounds are known (verdicts) or its next chunk comes,
            # within one budget for all the unit's parts (a shard of many small tables).
            state.held = chunk
            self._held_rows += len(frame)
        else:
            self._release_held(state)
            self._validate_unbounded(state, chunk)
        _ledger_keys(state, frame, self._suite)

    def _validate_unbounded(self, state: _PartState, chunk: QualityChunk) -> None:
        _record_gx(state, _validate(chunk.columns, state.suite))
        if self._bounds_later:
            self._spill(state, chunk)

    def _release_held(self, state: _PartState) -> None:
        """The part has more than one chunk: its first is validated as the others are,
        without the deferred rules, which are checked over the spill (_check_bounds)."""
        if state.held is not None:
            held, state.held = state.held, None
            self._held_rows -= _rows(held)
            self._validate_unbounded(state, held)

    def verdicts(self, parts: dict[str, QualityPart] | None = None) -> list[dict[str, Any]]:
        """Every check of the suite, once all chunks are in: one dict per check and
        part, `passed` or not, with counts and a few unexpected values. `parts` (the
        packaging pass) says what each part held, now that the driver is done."""
        if parts is not None:
            self._parts = dict(parts)
        for part in self._parts:
            self._state_of(part)  # a part that yielded nothing is still counted
        for part, state in self._states.items():
            state.spec = self._parts.get(part) or QualityPart()
            if state.held is not None:  # the part's only chunk: the whole suite at once
                held, state.held = state.held, None
                self._held_rows -= _rows(held)
                whole = expectations(self._suite, state.spec, bounded=True)
                _record_gx(state, _validate(held.columns, whole))
            elif self._bounds_later:
                self._check_bounds(state)
        return [
            c
            for part, state in self._states.items()
            for c in _verdicts(part, state, self._suite, self._unit)
        ]

    def _state_of(self, part: str) -> _PartState:
        if part not in self._states:
            spec = self._parts.get(part) or QualityPart()
            suite = expectations(self._suite, spec, bounded=not self._bounds_later)
            index = len(self._states)
            ledgers = {
                name: KeyLedger(Path(self._folder.name), f"part{index}-{name}", self._ledgers)
                for name in self._suite.ledger_names
            }
            spills = {
                rule.column: Path(self._folder.name) / f"part{index}-bounded-{i}.pickle"
                for i, rule in enumerate(deferred_rules(self._suite))
            }
            self._states[part] = _PartState(spec=spec, suite=suite, ledgers=ledgers, spills=spills)
        return self._states[part]

    @staticmethod
    def _spill(state: _PartState, chunk: QualityChunk) -> None:
        # Pickled, not as int64: a broken source may hold NULLs or text there, which the
        # rule must see as it would in the read-back. The folder is this run's own.
        for column, path in state.spills.items():
            with open(path, "ab") as out:
                pickle.dump(list(chunk.columns.get(column, ())), out, pickle.HIGHEST_PROTOCOL)

    def _check_bounds(self, state: _PartState) -> None:
        """The deferred rules, now that the part's bounds are known, over the spilled
        columns in frames of at most _BOUND_FRAME values."""
        for rule in deferred_rules(self._suite):
            path = state.spills[rule.column]
            between = _between(rule, state.spec)
            if not between or not path.exists():
                continue
            for values in _spilled_frames(path):
                _record_gx(state, _validate({rule.column: values}, between))
            path.unlink()  # checked once, however often verdicts is asked


def _rows(chunk: QualityChunk) -> int:
    return len(next(iter(chunk.columns.values()), ()))


def _spilled_frames(path: Path) -> Iterator[list[Any]]:
    values: list[Any] = []
    with open(path, "rb") as spilled:
        while True:
            try:
                values += pickle.load(spilled)  # this run wrote it, in its own folder
            except EOFError:
                break
            if len(values) >= _BOUND_FRAME:
                yield values
                values = []
    if values:
        yield values


def run_suite(
    technology: str,
    chunks: Iterator[QualityChunk],
    parts: dict[str, QualityPart] | None = None,
    unit: str = "",
) -> list[dict[str, Any]]:
    """Every check of the technology's suite over a stream of chunks (SuiteRun.verdicts),
    the parts known first; none when the technology declares no suite."""
    if suite_of(technology) is None:
        return []
    with SuiteRun(technology, unit, parts) as run:
        for chunk in chunks:
            run.add(chunk)
        return run.verdicts()


def _record_gx(state: _PartState, outcomes: list[dict[str, Any]]) -> None:
    for outcome in outcomes:
        kwargs = outcome["kwargs"]
        name = f"{outcome['type']}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"
        entry = state.failures.setdefault(name, {"unexpected": 0, "sample": []})
        if not outcome["success"]:
            entry["unexpected"] += outcome["unexpected_count"] or 1
            entry["sample"] = (entry["sample"] + outcome["sample"])[:_SAMPLE]


def _ledger_keys(state: _PartState, frame: Any, suite: QualitySuite) -> None:
    for key in suite.unique:
        state.ledgers["+".join(key)].add(key_hashes(frame[list(key)]))
    if suite.parents:
        parents = frame[[suite.parents[1]]].dropna()
        parents.columns = [suite.parents[0]]  # hashed as the paths they must match
        state.ledgers["parents"].add(key_hashes(parents))
    if suite.increasing and len(frame):
        values = frame[suite.increasing].to_numpy(np.int64)
        if state.last is not None:
            values = np.concatenate(([state.last], values))
        state.out_of_order += int(np.count_nonzero(np.diff(values) <= 0))
        state.last = int(values[-1])


def _verdicts(
    part: str, state: _PartState, suite: QualitySuite, unit: str
) -> Iterator[dict[str, Any]]:
    where = f"{unit}/{part}" if unit and unit != part else part

    def check(name: str, unexpected: int, problem: str, sample=()) -> dict[str, Any]:
        verdict = {
            "check": name,
            "part": where,
            "passed": unexpected == 0,
            "unexpected": unexpected,
        }
        if unexpected:
            verdict["problem"] = f"{where}: {problem}"
            if sample:
                verdict["sample"] = list(sample)
        return verdict

    for name, found in state.failures.items():
        yield check(
            f"gx:{name}",
            found["unexpected"],
            f"{found['unexpected']} records fail {name}",
            found["sample"],
        )
    for key in suite.unique:
        name = "+".join(key)
        duplicates = state.ledgers[name].duplicates()
        yield check(f"unique across the part: {name}", duplicates, f"{duplicates} duplicate {name}")
    if suite.parents:
        missing = state.ledgers["parents"].missing_from(state.ledgers[suite.parents[0]])
        yield check("every parent present", missing, f"{missing} records whose parent is missing")
    if suite.increasing:
        yield check(
            f"{suite.increasing} strictly increasing",
            state.out_of_order,
            f"{state.out_of_order} records whose {suite.increasing} does not increase",
        )
    if state.spec.records is not None:
        off = abs(state.records - state.spec.records)
        yield check(
            "count equals the source's",
            off,
            f"{state.records} records, the source held {state.spec.records}",
        )


def quality_of(checks: list[dict[str, Any]]) -> QualityResult:
    return QualityResult(
        status="passed" if all(c["passed"] for c in checks) else "failed", checks=list(checks)
    )


def prepare_suites() -> None:
    """Start the validator process now (the command calls this first thing), so that
    Great Expectations is imported there while Prefect starts here."""
    validator()
