"""Resolving ${env:NAME} and ${secret:BLOCK} placeholders in URLs, inside tasks only.

Flow parameters carry the placeholders; the secret values exist only in the process
that connects, and are registered for masking as they are resolved.
"""

from __future__ import annotations

from backstop.drivers.redact import resolve_placeholders


def _load_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


def resolve_url(url: str) -> str:
    return resolve_placeholders(url, _load_secret_block)
