"""Masking secrets in every log record, on the console and on their way to the API."""

from __future__ import annotations

import json
import logging
from typing import Any

from backstop.drivers.redact import SecretMaskingFilter, mask_secrets

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


def log_figures(step: str, **figures: Any) -> None:
    """One INFO line of a task's figures through the run logger (so the run's logs on
    the server hold them), as `step: name=value ...`; values are JSON, masked."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    shown = " ".join(
        f"{name}={mask_secrets(json.dumps(value, default=str, sort_keys=True))}"
        for name, value in figures.items()
    )
    try:
        logger: Any = get_run_logger()
    except MissingContextError:  # a task's function called outside a run (.fn)
        logger = logging.getLogger("backstop")
    logger.info("%s: %s", step, shown)
