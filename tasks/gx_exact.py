"""Great Expectations' ExpectColumnValuesToBeBetween, judged exactly for integers.

Great Expectations holds a Between rule's bounds as floats, which past 2**53 cannot tell
one integer from the next: 2**53 + 1 passed `max_value=2**53`. The validator
(tasks/gx_worker.py) passes each Between outcome through `exactly`, alone and grouped.
"""

from __future__ import annotations

from typing import Any

BOUNDS = ("min_value", "max_value")
SAMPLE = 20  # unexpected values sent back per expectation

_FLOAT_EXACT = 2**53  # every integer of at most this size is a float exactly
_EXACT_ARGS = {"column", *BOUNDS, "strict_min", "strict_max", "mostly"}


def exactly(outcome: dict[str, Any], asked: dict[str, Any], values: Any) -> dict[str, Any]:
    """A Between outcome for the rule as asked. Great Expectations compares with its
    bounds as floats, which past 2**53 cannot tell one integer from the next: 2**53 + 1
    passed `max_value=2**53`, int64's largest passed `max_value=2**63 - 2`. When the
    column's values (nulls aside, as GX skips them) and the bounds are integers and any
    is past 2**53, integer arithmetic gives the verdict, the count and the sample; a
    bound no float holds is named as asked. GX's verdict stands where it could not
    judge (it raised: no count) and for anything but integers."""
    outcome = {**outcome, "kwargs": {**outcome["kwargs"]}}
    for side in BOUNDS:
        bound = _integer(asked.get(side))
        if bound is not None and not _a_float(bound):
            outcome["kwargs"][side] = bound
    bounds = _integer_bounds(asked)
    if bounds is None or outcome["unexpected_count"] is None or not set(asked) <= _EXACT_ARGS:
        return outcome
    values = _integers(values)
    if values is None or not len(values):
        return outcome
    low, high = bounds
    extremes = (
        [values.min(), values.max()] if hasattr(values, "min") else [min(values), max(values)]
    )
    if all(
        -_FLOAT_EXACT <= int(n) <= _FLOAT_EXACT
        for n in (*extremes, *(b for b in bounds if b is not None))
    ):
        return outcome  # floats hold each of these integers: GX's comparison was exact
    if asked.get("strict_min") and low is not None:
        low += 1
    if asked.get("strict_max") and high is not None:
        high -= 1
    unexpected = [
        v
        for v in (values.tolist() if hasattr(values, "tolist") else values)
        if (low is not None and v < low) or (high is not None and v > high)
    ]
    considered, count, mostly = float(len(values)), len(unexpected), asked.get("mostly")
    return {
        **outcome,
        "success": count == 0
        or (mostly is not None and (considered - count) / considered >= mostly),
        "unexpected_count": count,
        "sample": [str(v)[:80] for v in unexpected[:SAMPLE]],
    }


def _a_float(n: int) -> bool:
    """Whether a float holds the integer n exactly."""
    try:
        return float(n) == n
    except OverflowError:
        return False


def _integer(bound: Any) -> int | None:
    """A bound as a Python int; None when it is none, or no integer (bools aside)."""
    import numpy as np

    if isinstance(bound, int | np.integer) and not isinstance(bound, bool):
        return int(bound)
    return None


def _integer_bounds(asked: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """A rule's bounds when each it has is an integer and min <= max (GX refuses min
    above max); None otherwise."""
    low, high = bounds = tuple(_integer(asked.get(side)) for side in BOUNDS)
    if any(asked.get(side) is not None and bound is None
           for side, bound in zip(BOUNDS, bounds, strict=True)):  # fmt: skip
        return None
    if bounds == (None, None) or (low is not None and high is not None and low > high):
        return None
    return low, high


def _integers(values: Any) -> Any:
    """A column's values without its nulls (None, NaN, pd.NA) when all the others are
    integers: an array of a numpy integer dtype, or a list of Python ints (a list of
    ints with a None became floats in the DataFrame GX judged: the list has them
    exactly). None when any value is no integer."""
    import numpy as np
    import pandas as pd

    if isinstance(values, pd.Series | pd.Index):
        values = values.dropna()
        dtype = getattr(values.dtype, "numpy_dtype", values.dtype)  # Int64 and the like
        values = values.to_numpy(dtype if dtype.kind in "iu" else object)
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iu":
            return values.ravel()
        if values.dtype != object:
            return None
    elif not isinstance(values, list | tuple | range):
        return None  # what else pandas takes for a column: GX's verdict stands
    kinds = set(map(type, values))
    if kinds <= {int, type(None)}:  # the drivers' columns: Python ints, NULLs as None
        return [v for v in values if v is not None] if type(None) in kinds else values
    integers = []
    for value in values:
        if type(value) is int or isinstance(value, np.integer):
            integers.append(int(value))
        elif value is None or value is pd.NA or (isinstance(value, float | np.floating)
                                                 and value != value):  # fmt: skip
            continue
        else:
            return None
    return integers
