"""What the `backstop` command prints: its summaries, progress and Prefect's console logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack, nullcontext
from typing import Any

from backstop.drivers.redact import mask_secrets


def _configure_prefect(verbose: bool) -> None:
    """Before Prefect is imported: the CLI prints its own summary, Prefect only warnings
    (backstop's own, such as a consistency warning, go through Prefect's run logger), and
    no failure twice: the CLI says each failure once, so Prefect's console ERROR lines
    and tracebacks show only with -v (its API handler still sends them to the server)."""
    quiet = f"{__name__}.{QuietConsoleHandler.__name__}"
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", quiet)
    elif os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS") == quiet:
        del os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"]  # inherited from a quiet run
    # This machine may have no route out; the ephemeral server should not try.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class QuietConsoleHandler(logging.Handler):
    """Prefect's console handler, less the ERROR records of Prefect's own loggers ("Encountered
    exception during execution", "Finished in state Failed", their tracebacks): the CLI
    reports the failure itself. Named in Prefect's logging configuration by
    _configure_prefect, which must not import Prefect: the handler is made here, when
    Prefect configures its logging."""

    def __new__(cls, **kwargs: Any) -> logging.Handler:  # type: ignore[misc]
        from prefect.logging.handlers import PrefectConsoleHandler

        handler = PrefectConsoleHandler(**kwargs)
        handler.addFilter(_not_a_prefect_error)
        return handler


def _not_a_prefect_error(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.name.startswith("prefect"))


def _progress(args: argparse.Namespace):
    if args.json or not sys.stderr.isatty():
        return nullcontext()
    from backstop.tasks.progress import RichProgress, reporting

    stack = ExitStack()
    stack.enter_context(reporting(stack.enter_context(RichProgress())))
    return stack


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


class _Reported(Exception):
    """A failure whose JSON and text are already composed."""

    def __init__(self, data: dict[str, Any], text: str, exit_code: int) -> None:
        super().__init__(text)
        self.data, self.text, self.exit_code = data, text, exit_code


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str, error: bool = False) -> None:
    if args.json:
        print(mask_secrets(json.dumps(data, default=str)))
    else:
        print(mask_secrets(text), file=sys.stderr if error else sys.stdout)
