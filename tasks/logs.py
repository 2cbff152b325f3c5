"""Masking secrets in every log record, on the console and on their way to the API."""

from __future__ import annotations

import logging

from backstop.drivers.redact import SecretMaskingFilter

_FILTER = SecretMaskingFilter()


def install_log_masking() -> None:
    """Attach the masking filter to every handler of the prefect and backstop loggers."""
    names = [
        "",
        *[n for n in logging.root.manager.loggerDict if n.startswith(("prefect", "backstop"))],
    ]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
