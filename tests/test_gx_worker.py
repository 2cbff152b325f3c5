"""The data-quality validator process (tasks/gx_worker.py): every reply answers the
request it was sent for, even after a request was cut short."""

from __future__ import annotations

import pickle
import random
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from backstop.tasks import gx_worker


class _Cut(Exception):
    """What a signal handler raises mid-request (backstop's own raises Interrupted)."""


def test_a_request_cut_short_does_not_hand_its_reply_to_the_next() -> None:
    """A long-lived process (a `serve` deployment) runs flow after flow: a request cut
    short by a signal or a cancellation must not leave its reply in the pipe, where
    the next request would read it as its own (another suite's verdicts)."""
    null_rule = [("ExpectColumnValuesToNotBeNull", {"column": "a"})]
    gx_worker.validator().validate({"a": [1]}, null_rule)  # started and warmed up

    def cut(signum: int, frame: object) -> None:
        raise _Cut

    previous = signal.signal(signal.SIGALRM, cut)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # while the child validates
        with pytest.raises(_Cut):
            gx_worker.validator().validate({"a": [None] * 3_000_000}, null_rule)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    regex_rule = [("ExpectColumnValuesToMatchRegex", {"column": "b", "regex": "^x$"})]
    outcomes = gx_worker.validator().validate({"b": ["x", "x"]}, regex_rule)
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
    process = gx_worker.ValidatorProcess()
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
    process = gx_worker.ValidatorProcess()
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
