"""Credentials never leave in URLs, messages or logs."""

from __future__ import annotations

import logging
import os

import pytest

from backstop.drivers.errors import BadInputError, PermanentError
from backstop.drivers.redact import (
    SecretMaskingFilter,
    check_userinfo,
    literal_url_secrets,
    mask_secrets,
    redact_url,
    resolve_placeholders,
    stash_url_secrets,
    strip_url_password,
)
from backstop.drivers.registry import get_driver


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://bob:hunter2@db:5432/cells",
            "postgresql+psycopg://bob:***@db:5432/cells",
        ),
        ("mongodb://u:p%40ss@h1,h2/?replicaSet=rs", "mongodb://u:***@h1,h2/?replicaSet=rs"),
        (
            "mysql+pymysql://root@127.0.0.1/x?password=abc&x=1",
            "mysql+pymysql://root@127.0.0.1/x?password=***&x=1",
        ),
        ("sqlite:///tmp/a.db", "sqlite:///tmp/a.db"),
        ("zk://h:2181/chroot", "zk://h:2181/chroot"),
        # A raw "@" in a password: masked to the last "@", no tail of it shown.
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ],
)
def test_redact_url(url: str, expected: str):
    assert redact_url(url) == expected


def test_strip_password_moves_it_to_the_environment():
    url = strip_url_password("postgresql://bob:Tr0ub4dor&3@db/cells", "BACKSTOP_TEST_PW")
    assert "Tr0ub4dor" not in url
    assert "${env:BACKSTOP_TEST_PW}" in url
    assert os.environ["BACKSTOP_TEST_PW"] == "Tr0ub4dor&3"
    assert resolve_placeholders(url) == "postgresql://bob:Tr0ub4dor&3@db/cells"
    # Registered as a secret: masked anywhere it shows up later.
    assert mask_secrets("auth failed for Tr0ub4dor&3") == "auth failed for ***"
    assert "Tr0ub4dor" not in str(PermanentError("connect: password Tr0ub4dor&3 rejected"))


def test_missing_environment_placeholder_is_bad_input():
    with pytest.raises(BadInputError, match="NOT_SET_ANYWHERE"):
        resolve_placeholders("postgresql://u:${env:NOT_SET_ANYWHERE}@h/db")


def test_logging_filter_masks_messages_and_tracebacks():
    strip_url_password("mysql://u:CorrectHorse@h/db", "BACKSTOP_TEST_PW2")
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "failed with %s", ("CorrectHorse",), None
    )
    try:
        raise RuntimeError("CorrectHorse in a traceback")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    SecretMaskingFilter().filter(record)
    assert "CorrectHorse" not in record.getMessage()
    assert "CorrectHorse" not in record.exc_text


# A raw "@" or whitespace in user:password is read differently by client libraries
# (SQLAlchemy splits at the first "@", urllib and PyMongo at the last): refused, with
# no part of the password in the message, wherever a URL enters.
@pytest.mark.parametrize(
    ("url", "password_parts"),
    [
        ("postgresql://u:p@ss@host/db", ["p@ss", "@ss@"]),
        ("postgresql://u:pa ss@host/db", ["pa ss", "u:pa", "ss@"]),
        ("mongodb://u:pa\tss@h1,h2/db", ["pa\tss", "ss@"]),
        ("s3://key:se@cret@bucket/x", ["se@cret", "cret@"]),
    ],
)
def test_raw_at_or_space_in_userinfo_is_refused(url: str, password_parts: list[str]):
    for step in (check_userinfo, stash_url_secrets, literal_url_secrets):
        with pytest.raises(BadInputError, match="percent-encode") as refused:
            step(url)
        assert not any(part in str(refused.value) for part in password_parts)
    technology = {"postgresql": "schemaless", "mongodb": "docstore"}.get(url.split(":")[0])
    if technology:  # a driver refuses it before connecting
        with pytest.raises(BadInputError, match="%40"):
            get_driver(technology).check_urls([url], "source")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@host/db",
        "postgresql://u:pa%20ss@host/db",
        "postgresql://user@host:5432/db",
        "mongodb://u:${secret:team/pw}@h/db",
        "zk://h1:2181,h2:2181/app",
        "sqlite:////tmp/a b/c@d.db",
    ],
)
def test_percent_encoded_or_plain_userinfo_is_accepted(url: str):
    check_userinfo(url)
