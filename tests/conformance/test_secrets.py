"""Secrets, every driver: references anywhere in a URL are resolved before any driver
method sees it, and plain-text passwords given to the CLI never reach Prefect.

The first scenario rewrites every source and target URL so that everything after
`scheme://` (credentials, host, port, path) is one `${env:NAME}` or `${secret:BLOCK}`
reference: a driver method handed an unresolved URL cannot reach anything, so a single
call that is not given the resolved URL fails the round trip.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from test_secrets import leaks, stored_by_prefect

from backstop.drivers.redact import url_password

pytestmark = pytest.mark.integration


def as_references(urls: list[str], kind: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each URL as `scheme://${kind:NAME}`, NAME holding the rest of the URL (in this
    process's environment, or in a Prefect Secret block on the test server)."""
    rewritten = []
    for url in urls:
        scheme, rest = url.split("://", 1)
        name = f"BACKSTOP_CONF_{uuid.uuid4().hex[:10].upper()}"
        if kind == "env":
            monkeypatch.setenv(name, rest)
        else:
            from prefect.blocks.system import Secret

            name = name.lower().replace("_", "-")
            Secret(value=rest).save(name, overwrite=True)
        rewritten.append(f"{scheme}://${{{kind}:{name}}}")
    return rewritten


@pytest.mark.parametrize("kind", ["env", "secret"])
def test_backup_restore_verify_with_every_url_a_reference(harness, run, kind, monkeypatch):
    source, target = harness.make_source(), harness.make_target()
    before = harness.digest(source)

    backed_up = run.backup(as_references(source, kind, monkeypatch))
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    restored = run.restore(as_references(target, kind, monkeypatch))
    assert restored.code == 0, restored.stdout + restored.stderr
    assert restored.json["verified"] is True
    checked = run.verify()
    assert checked.code == 0 and checked.json["ok"] is True, checked.stdout
    assert harness.digest(target) == before
    assert harness.digest(source) == before


def test_plain_text_passwords_given_to_the_cli_never_reach_prefect(harness, run):
    """The harness's own URLs, passwords and all, through the CLI: nothing Prefect
    stored about the runs (parameters, states, task runs, logs, artifacts, events)
    holds a password."""
    source, target = harness.make_source(), harness.make_target()
    passwords = {url_password(u) for u in source + target} - {None, ""}
    if not passwords:
        pytest.skip(f"{harness.id}: its URLs carry no password")
    since = datetime.now(UTC)

    backed_up = run.backup(source)
    assert backed_up.code == 0, backed_up.stdout + backed_up.stderr
    restored = run.restore(target)
    assert restored.code == 0, restored.stdout + restored.stderr

    outputs = [r.stdout + r.stderr for r in (backed_up, restored)]
    assert not leaks(sorted(passwords), stored_by_prefect(since) + outputs)
