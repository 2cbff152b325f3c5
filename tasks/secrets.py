"""Secrets and flow parameters: references resolved inside tasks, plain text refused.

Prefect stores every flow run's parameters. So a secret (a URL password, a secret
query parameter, a store credential) never travels as one: parameters carry
`${env:NAME}` or `${secret:BLOCK}` references, and the value exists only in the
process that connects, registered for masking as it is resolved (`resolve_url`,
`resolve_options`). A flow refuses a request with a secret in plain text
(`refuse_literal_secrets`); the CLI, and anyone calling a flow from Python, first
moves such secrets into this process's environment (`hide_secrets`).
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

from pydantic import BaseModel

from backstop.drivers.errors import BadInputError
from backstop.drivers.redact import (
    MASK,
    is_secret_name,
    literal_option_secrets,
    literal_url_secrets,
    redact_url,
    resolve_option_placeholders,
    resolve_placeholders,
    stash_option_secrets,
    stash_url_secrets,
)

Request = TypeVar("Request", bound=BaseModel)

# The request fields that hold connection URLs (one per shard, cluster or target).
URL_FIELDS = ("sources", "targets", "scratch")


def _load_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


# `block:NAME` in place of a URL names a saved BackstopConnection or BackstopStore block
# (tasks/blocks.py); NAME as Prefect spells block names.
BLOCK_PREFIX = "block:"
_BLOCK_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")


def block_name(url: str) -> str | None:
    """The block a `block:NAME` URL names, or None for any other URL; a name Prefect
    could not have given a block is bad input."""
    if not url.startswith(BLOCK_PREFIX):
        return None
    name = url[len(BLOCK_PREFIX) :]
    if not _BLOCK_NAME.match(name):
        raise BadInputError(
            f"{url!r}: a block is named as block:NAME, NAME in lowercase letters, digits "
            "and dashes (as Prefect names blocks)"
        )
    return name


def resolve_url(url: str) -> str:
    """The URL to connect with: a block's (password in it), or the URL with its
    references resolved. Only in the process that connects."""
    name = block_name(url)
    if name is not None:
        from backstop.tasks.blocks import load_connection

        return load_connection(name).connection_url()
    return resolve_placeholders(url, _load_secret_block)


def shown_url(url: str) -> str:
    """The URL as a manifest records it (and `latest` matches it): redacted, a block's
    URL in place of its name, so that one source is one text however it was given."""
    name = block_name(url)
    if name is not None:
        from backstop.tasks.blocks import load_connection

        return load_connection(name).shown_url()
    return redact_url(url)


def shown_urls(urls: list[str]) -> list[str]:
    return [shown_url(url) for url in urls]


def resolve_urls(urls: list[str]) -> list[str]:
    return [resolve_url(url) for url in urls]


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """Store options with their references resolved (nested ones included)."""
    return resolve_option_placeholders(options, _load_secret_block)


# -- requests --------------------------------------------------------------------------
def literal_secrets_in(request: BaseModel) -> list[str]:
    """Where a flow request holds a secret in plain text, described without it."""
    found = []
    for field in URL_FIELDS:
        for url in getattr(request, field, None) or []:
            found += [f"{field} {redact_url(url)!r}: {what}" for what in literal_url_secrets(url)]
    store = getattr(request, "store", None)
    if store is not None:
        found += [
            f"store {redact_url(store.url)!r}: {what}" for what in literal_url_secrets(store.url)
        ]
        found += [f"store option {path}" for path in literal_option_secrets(store.options)]
        found += [f"store {field}: a private key's text" for field in _literal_key_fields(store)]
    # Driver options are stored too (flow-run parameters, the manifest's options).
    found += [f"option {path}" for path in literal_option_secrets(getattr(request, "options", {}))]
    return found


# Marks of a private key's text: an age identity, a PEM private key (a signing key).
_PRIVATE_KEY_MARKS = ("AGE-SECRET-KEY-", "PRIVATE KEY")


def _holds_private_key(value: str) -> bool:
    upper = value.upper()
    return any(mark in upper for mark in _PRIVATE_KEY_MARKS)


def _literal_key_fields(store: Any) -> list[str]:
    """The store's key fields that hold a key itself, not where to find it."""
    return [
        field
        for field in ("identity", "signing_key")
        if isinstance(getattr(store, field, None), str) and _holds_private_key(getattr(store, field))
    ]


def hide_secrets(request: Request) -> Request:
    """The request with every plain-text secret moved into this process's environment
    (BACKSTOP_SECRET_<n>) and a ${env:} reference in its place: what the CLI does
    before starting a flow, and what a Python caller of a flow must do too."""
    update: dict[str, Any] = {}
    for field in URL_FIELDS:
        urls = getattr(request, field, None)
        if urls:
            update[field] = [stash_url_secrets(url) for url in urls]
    if getattr(request, "options", None):
        update["options"] = stash_option_secrets(request.options)
    store = getattr(request, "store", None)
    if store is not None:
        update["store"] = store.model_copy(
            update={
                "url": stash_url_secrets(store.url),
                "options": stash_option_secrets(store.options),
            }
        )
    return request.model_copy(update=update)


def refuse_literal_secrets(request: BaseModel) -> None:
    """A flow's first step: refuse (exit 2) a request holding a secret in plain text.

    The run's stored parameters hold it already (a deployment's run form, a Python
    call): they are overwritten with the secret masked, so the refusal leaves no copy.
    """
    found = literal_secrets_in(request)
    if not found:
        return
    _scrub_stored_parameters()
    raise BadInputError(
        "a secret written in plain text is refused, since Prefect stores a flow run's "
        f"parameters ({'; '.join(found)}). Save it in a Prefect Secret block and write "
        "${secret:BLOCK} in its place (e.g. postgresql+psycopg://backup:${secret:pg-password}"
        "@db/cells, or the store option secret=${secret:s3-secret}), or write ${env:NAME} to "
        "read it from the environment of the process running the flow. The backstop command "
        "does this for its own runs."
    )


def _masked(value: Any, key: str = "") -> Any:
    """A stored parameter value with each plain-text secret replaced by ***."""
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if key and is_secret_name(key) and literal_option_secrets({key: value}):
        return MASK
    if isinstance(value, str):
        if _holds_private_key(value):  # an identity or signing key typed into a form
            return MASK
        try:
            return stash_url_secrets(value, lambda _secret: MASK)
        except BadInputError:  # half a reference, half plain text: mask it all
            return redact_url(value)
    return value


def _scrub_stored_parameters() -> None:
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    stored = context.flow_run.parameters
    masked = _masked(stored)
    if masked == stored:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, parameters=masked)
    except Exception as exc:  # the refusal matters more; say the copy may remain
        logging.getLogger(__name__).warning(
            "could not mask the refused secret in flow run %s's parameters: %s",
            context.flow_run.id,
            type(exc).__name__,
        )
