"""Data-quality suites: Great Expectations on the records of a backup and of a restored
target, chunk by chunk, plus the checks that span a whole part (uniqueness, parents,
counts) kept on disk so memory stays bounded however large the part.

A suite per technology (the driver supplies the records as column chunks):

    schemaless  row_key UUID-shaped and not null; ref_key >= 0; added_id <= the
                watermark and strictly increasing (so unique); (row_key, column_name,
                ref_key) unique; count equal to the source's count at the watermark
    docstore    _id present and unique per collection; count equal to the backup's
    zookeeper   paths absolute and unique; every parent present; count equal

Great Expectations runs each chunk (an ephemeral context, no project folder) for the
per-record expectations. Uniqueness is a property of the whole part, which a chunk
cannot see, so it is KeyLedger's: 64-bit hashes of every key, on disk, compared one
bucket at a time.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backstop.drivers.contract import QualityChunk, QualityPart
from backstop.tasks.manifest import QualityResult

UUID_SHAPE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_SAMPLE = 5


# -- whole-part checks on disk ------------------------------------------------------------
class KeyLedger:
    """64-bit hashes of a part's keys, spilled to BUCKETS files by their top bits, so
    duplicates and missing keys are found one bucket (1/64 of the keys) at a time."""

    BUCKET_BITS = 6
    BUCKETS = 1 << BUCKET_BITS

    def __init__(self, folder: Path, name: str) -> None:
        self._paths = [folder / f"{name}-{i:02d}.u64" for i in range(self.BUCKETS)]
        self.count = 0

    def add(self, hashes: np.ndarray) -> None:
        """Record 64-bit key hashes (see key_hashes)."""
        if not len(hashes):
            return
        buckets = (hashes >> np.uint64(64 - self.BUCKET_BITS)).astype(np.intp)
        order = np.argsort(buckets, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(buckets, minlength=self.BUCKETS))))
        hashes = hashes[order]
        for i in np.flatnonzero(np.diff(bounds)):
            with open(self._paths[i], "ab") as out:
                hashes[bounds[i] : bounds[i + 1]].tofile(out)
        self.count += len(hashes)

    def bucket(self, i: int) -> np.ndarray:
        path = self._paths[i]
        return np.fromfile(path, dtype=np.uint64) if path.exists() else np.empty(0, np.uint64)

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


def key_hashes(frame: Any) -> np.ndarray:
    """A 64-bit hash per row of `frame`'s columns, computed by pandas in C."""
    import pandas as pd

    return pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)


# -- suites -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    expectations: Callable[[QualityPart], list[Any]]  # Great Expectations, per chunk
    unique: tuple[tuple[str, ...], ...] = ()  # keys unique across the whole part
    increasing: str | None = None  # a column strictly increasing across the part
    parents: tuple[str, str] | None = None  # (path, parent): every parent present

    @property
    def ledger_names(self) -> list[str]:
        return ["+".join(key) for key in self.unique] + (["parents"] if self.parents else [])


def _schemaless(part: QualityPart) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [
        e.ExpectColumnValuesToNotBeNull(column="row_key"),
        e.ExpectColumnValuesToMatchRegex(column="row_key", regex=UUID_SHAPE),
        e.ExpectColumnValuesToNotBeNull(column="column_name"),
        e.ExpectColumnValuesToBeBetween(column="ref_key", min_value=0),
    ]
    if "added_id" in part.max_values:
        out.append(
            e.ExpectColumnValuesToBeBetween(
                column="added_id", min_value=1, max_value=part.max_values["added_id"]
            )
        )
    return out


def _docstore(part: QualityPart) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToNotBeNull(column="_id")]


def _zookeeper(part: QualityPart) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="path"),
        e.ExpectColumnValuesToMatchRegex(column="path", regex=r"^/"),
    ]


SUITES: dict[str, Suite] = {
    "schemaless": Suite(
        _schemaless, unique=(("row_key", "column_name", "ref_key"),), increasing="added_id"
    ),
    "docstore": Suite(_docstore, unique=(("_id",),)),
    "zookeeper": Suite(_zookeeper, unique=(("path",),), parents=("path", "parent")),
}


# -- running ------------------------------------------------------------------------------
class _Gx:
    """One ephemeral Great Expectations context per process (no project folder)."""

    _lock = threading.Lock()
    _batch_definition: Any = None

    @classmethod
    def ready(cls) -> None:
        """Create the context (suites need an active one) once per process."""
        with cls._lock:
            if cls._batch_definition is None:
                cls._batch_definition = cls._setup()

    @classmethod
    def validate(cls, frame: Any, suite: Any) -> Any:
        cls.ready()
        with cls._lock:  # GX contexts are not made for concurrent use
            batch = cls._batch_definition.get_batch(batch_parameters={"dataframe": frame})
            return batch.validate(suite, result_format={"result_format": "SUMMARY"})

    @staticmethod
    def _setup() -> Any:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("backstop")
        return source.add_dataframe_asset("records").add_batch_definition_whole_dataframe("chunk")


@dataclass
class _PartState:
    spec: QualityPart
    suite: Any
    ledgers: dict[str, KeyLedger]
    records: int = 0
    last: Any = None
    out_of_order: int = 0
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_suite(
    technology: str,
    chunks: Iterator[QualityChunk],
    parts: dict[str, QualityPart] | None = None,
    unit: str = "",
) -> list[dict[str, Any]]:
    """Every check of the technology's suite over a stream of chunks: one dict per
    check and part, `passed` or not, with counts and a few unexpected values."""
    import great_expectations as gx
    import pandas as pd

    suite_spec = SUITES[technology]
    _Gx.ready()
    states: dict[str, _PartState] = {}
    with tempfile.TemporaryDirectory(prefix="backstop-quality-") as folder:

        def state_of(part: str) -> _PartState:
            if part not in states:
                spec = (parts or {}).get(part) or QualityPart()
                suite = gx.ExpectationSuite(name=f"backstop-{technology}")
                for expectation in suite_spec.expectations(spec):
                    suite.add_expectation(expectation)
                ledgers = {
                    name: KeyLedger(Path(folder), f"part{len(states)}-{name}")
                    for name in suite_spec.ledger_names
                }
                states[part] = _PartState(spec=spec, suite=suite, ledgers=ledgers)
            return states[part]

        for chunk in chunks:
            state = state_of(chunk.part)
            frame = pd.DataFrame(chunk.columns)
            state.records += len(frame)
            _record_gx(state, _Gx.validate(frame, state.suite))
            _ledger_keys(state, frame, suite_spec)
        for part in parts or {}:
            state_of(part)  # a part that yielded nothing is still counted
        return [
            c for part, state in states.items() for c in _verdicts(part, state, suite_spec, unit)
        ]


def _record_gx(state: _PartState, result: Any) -> None:
    for outcome in result.results:
        config = outcome.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        name = f"{config.type}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"
        entry = state.failures.setdefault(name, {"unexpected": 0, "sample": []})
        if not outcome.success:
            found = outcome.result.get("unexpected_count") or 1
            entry["unexpected"] += found
            sample = outcome.result.get("partial_unexpected_list") or []
            entry["sample"] = (entry["sample"] + [str(v)[:80] for v in sample])[:_SAMPLE]


def _ledger_keys(state: _PartState, frame: Any, suite: Suite) -> None:
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


def _verdicts(part: str, state: _PartState, suite: Suite, unit: str) -> Iterator[dict[str, Any]]:
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
