"""A restore's target check, done by the CLI before Prefect starts.

A restore that cannot go ahead (a backup id the store does not hold; a target that
already holds data in the default mode, fail-if-exists; a target table that is not a
cell table) is bad input: the restore flow refuses it and leaves the target untouched,
but only after Prefect has started, the backup's files have been re-hashed and a server
perhaps been waited for. Finding the backup needs only the store, and the target check
one connection, so the CLI asks the questions the flow asks (`ArtifactStore.resolve`,
`Driver.prepare_restore`, which only reads: the driver contract says it checks before
anything is written) and says "exit 2" in about a second. The flow asks again: a
deployment's run does not pass through here, and a target can fill up in between.

Only a refusal counts here. A store or target this process cannot reach, or a reference
only Prefect can resolve (`${secret:BLOCK}`, `block:NAME`), leaves the question to the
flow, which retries what is transient and reports what is not.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from backstop.drivers.contract import RestoreMode, RestorePlan
from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import resolve_placeholders

log = logging.getLogger(__name__)


def needs_prefect(args: argparse.Namespace) -> bool:
    """A `${secret:BLOCK}` or a `block:NAME` anywhere is resolved through Prefect's API:
    not before it."""
    texts = [args.store, *args.target, *args.store_option, *args.option]
    return any("${secret:" in text or text.startswith("block:") for text in texts)


def check_restore_targets(
    args: argparse.Namespace,
    driver: Any,
    store: Any,
    options: dict[str, Any],
    rename: dict[str, str],
) -> None:
    """Refuse (BadInputError) what the restore flow would refuse of the backup reference
    and the targets; anything else is for the flow to judge. `store` is the CLI's
    StoreSpec; `options` and `rename` as the restore gets them."""
    if args.source or needs_prefect(args):
        return  # --source compares identities (a Prefect task); references need Prefect
    from backstop.tasks.packaging import check_decryptable

    try:
        opened = store.open()
        manifest = opened.resolve(driver.name, args.backup, validated_only=not args.force)
        chain = opened.chain(manifest)
        check_decryptable(opened, driver.name, chain)
    except BadInputError:
        raise  # no such backup, or no one latest: the flow would say the same
    except Exception as exc:  # unreachable store, damaged chain: the flow reports it
        log.debug("restore pre-flight skipped: %s", exc)
        return
    if args.include:
        # The flow first asks whether the patterns select any of the backup (reading
        # the backup's parts from the store: not for a pre-flight), and its answer
        # ("matches nothing") must not be hidden behind a target check of the whole.
        return
    from backstop.tasks.manifest import chained_units

    plan = RestorePlan(
        mode=RestoreMode(args.mode),
        include=tuple(args.include),
        until=args.until,
        rename=tuple(rename.items()),
        options=options,
    )
    targets = [resolve_placeholders(t) for t in args.target]
    try:
        driver.prepare_restore(chained_units(chain), targets, plan)
    except BadInputError:
        raise
    except Exception as exc:  # an unreachable target is retried by the flow
        log.debug("restore pre-flight skipped: %s", exc)
