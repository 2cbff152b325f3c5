"""Where URLs point, asked of their driver inside a task (placeholders resolved here)."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import task

from backstop.drivers.contract import Driver
from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import redact_url
from backstop.drivers.registry import get_driver
from backstop.tasks.retry import RETRYING, classified
from backstop.tasks.secrets import resolve_url


@task(name="identify", **RETRYING)
def identify(technology: str, urls: Sequence[str], role: str = "source") -> list[str]:
    """Each URL's identity (Driver.identity): compared to tell places apart, and
    recorded in manifests as the identity of a backup's sources."""
    return identities(technology, urls, role)


def identities(technology: str, urls: Sequence[str], role: str = "source") -> list[str]:
    """`identify`'s work, for a task that needs it on the way. A failure names the URL
    by its place among `urls` (Driver.place_name) as well as redacted: two URLs that
    differ only in their password redact alike."""
    driver = get_driver(technology)
    identities = []
    for index, url in enumerate(urls):
        name = driver.place_name(index, role)
        with classified(driver, f"identifying {name} ({redact_url(url)})"):
            # Redacted as a belt: an identity is stored and shown, never a password. Not
            # masked with every registered secret: a Secret block may hold a whole host or
            # path, and masking it would make different places look alike.
            identities.append(redact_url(driver.identity(resolve_url(url))))
    return identities


@task(name="probe-apart", **RETRYING)
def probe_apart(
    technology: str, written: Sequence[str], read: Sequence[str], written_role: str,
    read_role: str,
) -> None:  # fmt: skip
    """After the identities: ask the servers whether any place written is one read
    (Driver.reaches_same), for what identities cannot tell (one server, many addresses).
    With one role for both (`written` is `read`: distinct targets), a URL is not
    compared with itself. A driver that trusts its identities (the default
    reaches_same) is not asked: with 4,096 targets that was 8 million calls."""
    driver = get_driver(technology)
    if type(driver).reaches_same is Driver.reaches_same:
        return
    resolved_read = [_resolved(driver, url) for url in read]
    for i, target in enumerate(written):
        resolved = _resolved(driver, target)
        for j, source in enumerate(read):
            if written_role == read_role and j <= i:
                continue
            with classified(driver, f"comparing {redact_url(target)} with {redact_url(source)}"):
                same = driver.reaches_same(resolved, resolved_read[j])
            if same:
                raise BadInputError(
                    f"--{written_role} {redact_url(target)} is also a --{read_role} "
                    f"({redact_url(source)}): the same place, the server says, reached by "
                    "another address; it would be overwritten, so it must be another "
                    "server or path"
                )


def _resolved(driver: Driver, url: str) -> str:
    with classified(driver, f"resolving {redact_url(url)}"):
        return resolve_url(url)
