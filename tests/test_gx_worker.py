"""The data-quality validator process (tasks/gx_worker.py): every reply answers the
request it was sent for, even after a request was cut short."""

from __future__ import annotations

import pickle
import random
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from backstop.tasks import gx_client, gx_worker


class _Cut(Exception):
    """What a signal handler raises mid-request (backstop's own raises Interrupted)."""


def test_a_request_cut_short_does_not_hand_its_reply_to_the_next() -> None:
    """A long-lived process (a `serve` deployment) runs flow after flow: a request cut
    short by a signal or a cancellation must not leave its reply in the pipe, where
    the next request would read it as its own (another suite's verdicts)."""
    null_rule = [("ExpectColumnValuesToNotBeNull", {"column": "a"})]
    gx_client.validator().validate({"a": [1]}, null_rule)  # started and warmed up

    def cut(signum: int, frame: object) -> None:
        raise _Cut

    previous = signal.signal(signal.SIGALRM, cut)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # while the child validates
        with pytest.raises(_Cut):
            gx_client.validator().validate({"a": [None] * 3_000_000}, null_rule)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    regex_rule = [("ExpectColumnValuesToMatchRegex", {"column": "b", "regex": "^x$"})]
    outcomes = gx_client.validator().validate({"b": ["x", "x"]}, regex_rule)
    assert [o["type"] for o in outcomes] == ["expect_column_values_to_match_regex"]
    assert outcomes[0]["success"] and outcomes[0]["kwargs"]["column"] == "b"


def _requests(seed: int, count: int) -> list[gx_worker.Request]:
    """Small chunks of one shape, as many shards send them: keys (some missing), texts
    (some not matching), each chunk with its own upper bound; some chunks fail."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        rows = rng.randint(1, 30)
        keys = [rng.choice([None, *range(1, 60)]) if rng.random() < 0.05 else rng.randint(1, 50)
                for _ in range(rows)]  # fmt: skip
        texts = [rng.choice(["x", "x", "x", "y"]) if rng.random() < 0.1 else "x" for _ in keys]
        bound = rng.choice([None, 50, 55, 100]) if rng.random() < 0.3 else 50
        requests.append((
            {"k": keys, "t": texts},
            [("ExpectColumnValuesToNotBeNull", {"column": "t"}),
             ("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": "^x$"}),
             ("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 1, "max_value": bound})],
        ))  # fmt: skip
    return requests


@pytest.fixture(scope="module")
def in_process() -> gx_worker.Validator:
    return gx_worker.Validator()


@pytest.mark.parametrize("seed", range(6))
def test_requests_validated_together_report_what_each_reports_alone(in_process, seed) -> None:
    """Small shards' chunks are validated together (Validator.validate_many): the
    verdicts, counts and samples must be those of each chunk validated alone, whether
    all pass, some fail, or their bounds differ."""
    requests = _requests(seed, 12)
    alone = [("ok", in_process.validate(*request)) for request in requests]
    assert in_process.validate_many(requests) == alone
    passing = [
        r
        for r, (_, outcomes) in zip(requests, alone, strict=True)
        if all(o["success"] for o in outcomes)
    ]
    assert passing, "no passing chunk: the test would not see them validated together"
    before = in_process.passed_together
    assert in_process.validate_many(passing) == [
        ("ok", in_process.validate(*request)) for request in passing
    ]
    assert in_process.passed_together - before == len(passing) > 1  # in one validation


def test_threads_waiting_for_the_validator_share_one_exchange(in_process) -> None:
    """Units that finish together send their chunks as one message, and each thread
    gets its own chunk's verdicts back."""
    requests = _requests(7, 96)
    expected = [in_process.validate(*request) for request in requests]
    process = gx_client.ValidatorProcess()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda request: process.validate(*request), requests))
        assert got == expected
        assert process.exchanges < len(requests)
    finally:
        process.stop()


def _alone(validator: gx_worker.Validator, request: gx_worker.Request) -> gx_worker.Reply:
    try:
        return ("ok", validator.validate(*request))
    except Exception as exc:
        return ("error", f"{type(exc).__name__}: {exc}")


_GOOD = ({"k": [1, 2, 3]}, [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 1,
                                                                 "max_value": 10})])  # fmt: skip
_NULLS = [None, None]
# What a review found passing together while failing alone (or failing for all).
_NOT_TOGETHER = {
    "min above max on null rows": [
        (
            {"k": _NULLS},
            [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 5, "max_value": 1})],
        ),
        (
            {"k": [1.0, None]},
            [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 1, "max_value": 3})],
        ),
    ],
    "a NaN bound": [
        (
            {"k": [1.0, 2.0]},
            [
                (
                    "ExpectColumnValuesToBeBetween",
                    {"column": "k", "min_value": 0, "max_value": float("nan")},
                )
            ],
        ),
        (
            {"k": [1.0, 2.0]},
            [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 0, "max_value": 5})],
        ),
    ],
    "mostly": [
        ({"t": [None, "x"]}, [("ExpectColumnValuesToNotBeNull", {"column": "t", "mostly": 0.9})]),
        ({"t": ["x"] * 100}, [("ExpectColumnValuesToNotBeNull", {"column": "t", "mostly": 0.9})]),
    ],
    "bools and ints under a regex": [
        (
            {"t": [True, False]},
            [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})],
        ),
        ({"t": [1, 0]}, [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})]),
    ],
    "ints and missing ints under a regex": [
        (
            {"t": [1, None]},
            [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})],
        ),
        ({"t": [1, 2]}, [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})]),
    ],
    "no rows": [
        ({"t": []}, [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})]),
        ({"t": [1, 2]}, [("ExpectColumnValuesToMatchRegex", {"column": "t", "regex": r"^\d+$"})]),
    ],
    "a column named as a helper": [
        (
            {"k": [1], "__backstop_max_value_0": [None]},
            [
                ("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 0, "max_value": 5}),
                ("ExpectColumnValuesToNotBeNull", {"column": "__backstop_max_value_0"}),
            ],
        ),
        (
            {"k": [2], "__backstop_max_value_0": [None]},
            [
                ("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 0, "max_value": 9}),
                ("ExpectColumnValuesToNotBeNull", {"column": "__backstop_max_value_0"}),
            ],
        ),
    ],
    "a bound too large for a float": [
        ({"k": [1]}, [("ExpectColumnValuesToBeBetween", {"column": "k", "max_value": 10**400})]),
        ({"k": [1]}, [("ExpectColumnValuesToBeBetween", {"column": "k", "max_value": 5})]),
    ],
    "a bound GX refuses": [
        (
            {"k": [1]},
            [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": "", "max_value": 5})],
        ),
        (
            {"k": [1]},
            [("ExpectColumnValuesToBeBetween", {"column": "k", "min_value": 0, "max_value": 5})],
        ),
    ],
}


@pytest.mark.parametrize("case", sorted(_NOT_TOGETHER))
def test_what_cannot_be_judged_together_is_judged_alone(in_process, case) -> None:
    requests = [*_NOT_TOGETHER[case], _GOOD, _GOOD]
    assert in_process.validate_many(requests) == [_alone(in_process, r) for r in requests]


def test_threads_whose_requests_exceed_one_message_each_get_their_own_verdicts(
    in_process,
) -> None:
    """Requests of 30,000 rows: a message holds one of them, so most threads wait
    behind others' messages (a thread once found its request sent by none)."""
    requests = [
        ({"k": list(range(i, i + 30_000))}, [("ExpectColumnValuesToBeBetween",
                                               {"column": "k", "min_value": 0,
                                                "max_value": 30_000 + i % 3})])
        for i in range(12)
    ]  # fmt: skip
    expected = [in_process.validate(*request) for request in requests]
    process = gx_client.ValidatorProcess()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            got = list(pool.map(lambda request: process.validate(*request), requests))
        assert got == expected
    finally:
        process.stop()


def test_a_request_that_cannot_be_read_fails_alone(in_process) -> None:
    """The child answers each request of a message on its own: one that cannot be
    unpickled is an error for it, not for the requests sent with it."""
    good = pickle.dumps(_GOOD)
    replies = gx_worker._answer(in_process, [good, b"not a pickle", good])
    assert [status for status, _ in replies] == ["ok", "error", "ok"]
    assert replies[0] == replies[2] == _alone(in_process, _GOOD)


def _between(values, **bounds) -> gx_worker.Request:
    return ({"k": values}, [("ExpectColumnValuesToBeBetween", {"column": "k", **bounds})])


_INT64_MAX = 2**63 - 1
# Integers past 2**53 that a float cannot tell from the bound: Great Expectations makes
# its bounds floats, and passed them (case: the request, and whether it passes).
_EXACTLY = {
    "2**53+1 above 2**53": (_between([2**53 + 1], max_value=2**53), False),
    "2**53 at 2**53": (_between([2**53], max_value=2**53), True),
    "-(2**53)-1 below -(2**53)": (_between([-(2**53) - 1], min_value=-(2**53)), False),
    "-(2**53) at -(2**53)": (_between([-(2**53)], min_value=-(2**53)), True),
    "int64 max above 2**63-2": (_between([_INT64_MAX], min_value=0, max_value=2**63 - 2), False),
    "2**63-2 at 2**63-2": (_between([2**63 - 2], min_value=0, max_value=2**63 - 2), True),
    "int64 min below -(2**63)+1": (_between([-(2**63)], min_value=-(2**63) + 1), False),
    "int64 max under a bound past int64": (_between([_INT64_MAX], max_value=2**64), True),
    "int64 min over a bound past int64": (_between([-(2**63)], min_value=-(2**64)), True),
    "every int64 above a bound below int64": (_between([-(2**63)], max_value=-(2**64)), False),
    "uint64 max above 2**64-2": (
        _between(np.array([3, 2**64 - 1], np.uint64), min_value=0, max_value=2**64 - 2),
        False,
    ),
    "uint64 2**64-2 at 2**64-2": (
        _between(np.array([3, 2**64 - 2], np.uint64), min_value=0, max_value=2**64 - 2),
        True,
    ),
    "nullable, above": (_between([2**53 + 1, None], min_value=1, max_value=2**53), False),
    "nullable, at": (_between([None, 2**53], min_value=1, max_value=2**53), True),
    "NaN, above": (_between([float("nan"), 2**53 + 1], max_value=2**53), False),
    "Python ints past int64, above": (_between([2**70 + 1, None], max_value=2**70), False),
    "Python ints past int64, at": (_between([2**70, None], max_value=2**70), True),
    "strict, at the bound": (_between([2**53 + 1], max_value=2**53 + 1, strict_max=True), False),
    "strict, under the bound": (_between([2**53], max_value=2**53 + 1, strict_max=True), True),
    "mostly, too few": (_between([2**53 + 1, 2**53 + 2, 1, 1], max_value=2**53, mostly=0.6), False),
    "mostly, enough": (_between([2**53 + 1, 2**53 + 2, 1, 1], max_value=2**53, mostly=0.5), True),
}


def _like(request: gx_worker.Request, value: int) -> gx_worker.Request:
    """A request of the same shape (the column's type, the rules) holding `value`."""
    (column,), rules = request[0].values(), request[1]
    if isinstance(column, np.ndarray):
        values = np.array([value], column.dtype)
    else:
        values = [value, None] if None in column else [value]
    return {"k": values}, rules


@pytest.mark.parametrize("case", sorted(_EXACTLY))
def test_integer_bounds_are_judged_exactly_alone_and_together(in_process, case) -> None:
    """Past 2**53 a float cannot hold every integer: an int64 value one above its bound
    passed Great Expectations. Integer columns are judged against integer bounds with
    integer arithmetic, alone, and grouped with passing chunks of the same shape."""
    request, passes = _EXACTLY[case]
    alone = _alone(in_process, request)
    assert alone[0] == "ok" and [o["success"] for o in alone[1]] == [passes]
    requests = [request, _like(request, 3), _like(request, 3)]
    together = in_process.validate_many(requests)
    assert together == [_alone(in_process, r) for r in requests]
    assert [o["success"] for o in together[0][1]] == [passes]


def test_an_exact_failure_names_the_bound_the_count_and_the_values(in_process) -> None:
    [outcome] = in_process.validate(
        *_between([2**63 - 2, _INT64_MAX, 5, _INT64_MAX], max_value=2**63 - 2)
    )
    assert not outcome["success"]
    assert outcome["kwargs"] == {"column": "k", "max_value": 2**63 - 2}  # not 2.0**63
    assert outcome["unexpected_count"] == 2
    assert outcome["sample"] == [str(_INT64_MAX)] * 2
    [outcome] = in_process.validate(*_between([2**53 + 1, 1, None, 2**53 + 3], max_value=2**53))
    assert (outcome["success"], outcome["unexpected_count"]) == (False, 2)
    assert outcome["sample"] == [str(2**53 + 1), str(2**53 + 3)]
    assert outcome["kwargs"] == {"column": "k", "max_value": 2**53}


def test_chunks_with_their_own_integer_bounds_are_judged_exactly_together(in_process) -> None:
    """Grouped chunks hold differing bounds as per-row columns: one whose value is one
    above its own bound past 2**53 fails there as it does alone."""
    requests = [
        _between([2**53 + 1], max_value=2**53),
        _between([2**53 + 5], max_value=2**53 + 8),
        _between([1, 2], max_value=2**53 + 2),
    ]
    expected = [_alone(in_process, r) for r in requests]
    assert [[o["success"] for o in outcomes] for _, outcomes in expected] == [
        [False],
        [True],
        [True],
    ]
    assert in_process.validate_many(requests) == expected
    before = in_process.passed_together
    assert in_process.validate_many(requests[1:]) == expected[1:]
    assert in_process.passed_together - before == 2


def test_two_bounds_one_float_apart_are_two_rules(in_process) -> None:
    """2**53 and 2**53+1 are one float: Great Expectations keeps one of two such rules
    of a suite. Each is judged, and reported, as the rule it is."""
    rules = [
        ("ExpectColumnValuesToBeBetween", {"column": "k", "max_value": 2**53 + 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "k", "max_value": 2**53}),
    ]
    outcomes = in_process.validate({"k": [2**53 + 1]}, rules)
    assert [(o["kwargs"]["max_value"], o["success"]) for o in outcomes] == [
        (2**53 + 1, True),
        (2**53, False),
    ]


def test_one_request_is_validated_without_grouping(in_process, monkeypatch) -> None:
    """A message of one request has nothing to group with: it is validated alone
    without _shape's look at its columns, to the same verdicts."""
    shaped = []
    shape = gx_worker._shape
    monkeypatch.setattr(gx_worker, "_shape", lambda *args: shaped.append(args) or shape(*args))
    for request in [*_requests(3, 4), _GOOD, _EXACTLY["2**53+1 above 2**53"][0]]:
        assert in_process.validate_many([request]) == [_alone(in_process, request)]
    bad = ({"k": [1]}, [("ExpectColumnValuesToBeBetween", {"column": "k", "max_value": 10**400})])
    [(status, _)] = in_process.validate_many([bad])
    assert status == "error"
    assert shaped == []
    in_process.validate_many([_GOOD, _GOOD])
    assert len(shaped) == 2  # two requests: grouped as before


def test_built_suites_stay_bounded_as_shards_grow(in_process) -> None:
    """Each shard's watermark makes a suite of its own: 4,096 shards built 4,096 suites,
    kept for the life of the validator. The most recently used are kept, and a suite
    built again after it was dropped judges as before."""
    limit = gx_worker._SUITES_KEPT
    for watermark in range(1, limit + 40):
        rule = [("ExpectColumnValuesToBeBetween", {"column": "a", "min_value": 1,
                                                    "max_value": watermark})]  # fmt: skip
        [outcome] = in_process.validate({"a": [watermark, watermark + 1]}, rule)
        assert not outcome["success"] and outcome["unexpected_count"] == 1
    assert len(in_process._suites) == limit
    first = [("ExpectColumnValuesToBeBetween", {"column": "a", "min_value": 1, "max_value": 1})]
    assert repr(first) not in in_process._suites  # dropped, and built again when asked
    assert [o["success"] for o in in_process.validate({"a": [1, 2]}, first)] == [False]
    assert [o["success"] for o in in_process.validate({"a": [1, 1]}, first)] == [True]
