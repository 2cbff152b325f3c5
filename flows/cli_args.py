"""The parts of a request the parsed command line gives: options, store, keys, limits."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import stash_option_secrets, stash_url_secrets


def _key_values(pairs: list[str], flag: str, shape: str = "KEY=VALUE") -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError(f"{flag} takes {shape}, got {pair!r}")
        options[key] = value
    return options


def _options(args: argparse.Namespace, stash: bool = True) -> dict[str, Any]:
    """The driver options of a backup, restore or drill, plain-text secrets moved into
    the environment (references in their place, like URLs' passwords); a backup's
    --include/--exclude travel as options too."""
    options = _key_values(args.option, "--option")
    if args.command == "backup":
        options |= {"include": args.include} if args.include else {}
        options |= {"exclude": args.exclude} if args.exclude else {}
    return stash_option_secrets(options) if stash else options


def _hide_passwords(urls: list[str], role: str) -> list[str]:
    """Plain-text secrets in the `role` URLs (passwords, secret query parameters) move
    to this process's environment; the flow's parameters get ${env:} references."""
    return [stash_url_secrets(url) for url in urls]


def _store(args: argparse.Namespace):
    from backstop.tasks.store import StoreSpec

    # The store URL and options travel as flow parameters too: same treatment.
    options = _key_values(args.store_option, "--store-option")
    return StoreSpec(
        url=stash_url_secrets(args.store),
        options=stash_option_secrets(options),
        **_keys(args),
        **_limits(args),
    )


def _keys(args: argparse.Namespace) -> dict[str, Any]:
    """The store's encryption settings from the command line, checked here (exit 2):
    public keys travel as parameters; an identity or a signing key only as where to
    find it."""
    from backstop.tasks import crypto, signing

    recipients = list(getattr(args, "recipient", None) or [])
    if getattr(args, "recipients_file", None):
        recipients += crypto.recipients_in_file(args.recipients_file)
    crypto.parse_recipients([r for r in recipients if not crypto.is_reference(r)])
    identity = getattr(args, "identity", None)
    if identity:
        crypto.refuse_literal_identity(identity)
        if "${" not in identity:
            identity = os.path.abspath(os.path.expanduser(identity))
            crypto.load_identities(identity)  # readable, and an identity: before any flow
    signing_key = getattr(args, "signing_key", None)
    if signing_key:
        signing.refuse_literal_signing_key(signing_key)
        if "${" not in signing_key:
            signing_key = os.path.abspath(os.path.expanduser(signing_key))
            signing.load_signing_key(signing_key)
    verify_key = getattr(args, "verify_key", None)
    if verify_key:
        if "${" not in verify_key and not verify_key.strip().startswith(signing.ONE_LINE_PREFIX):
            verify_key = os.path.abspath(os.path.expanduser(verify_key))
        if "${" not in verify_key:
            signing.load_verify_key(verify_key)
    return {
        "recipients": recipients,
        "identity": identity,
        "signing_key": signing_key,
        "verify_key": verify_key,
    }


def _limits(args: argparse.Namespace) -> dict[str, float | None]:
    """--limit-upload and --limit-download, checked here (exit 2): MB/s, more than 0."""
    return {
        "limit_upload_mb_s": _rate(getattr(args, "limit_upload", None), "--limit-upload"),
        "limit_download_mb_s": _rate(getattr(args, "limit_download", None), "--limit-download"),
    }


def _rate(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    from backstop.tasks.bandwidth import MAX_MB_S, MIN_MB_S

    if not MIN_MB_S <= value <= MAX_MB_S:  # nan fails too
        raise BadInputError(
            f"{flag} takes a rate in MB/s (10^6 bytes a second) from {MIN_MB_S} to "
            f"{MAX_MB_S:g}, got {text!r}"
        )
    return value
