"""The data-quality validator process (tasks/gx_worker.py): every reply answers the
request it was sent for, even after a request was cut short."""

from __future__ import annotations

import signal

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
