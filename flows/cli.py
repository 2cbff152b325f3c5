"""The `backstop` command: ad hoc runs of the same flows deployments run.

Exit codes: 0 done; 1 the operation failed (unreachable after retries, verification
failed); 2 bad usage or bad input. With --json, exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

from backstop.drivers.errors import BackstopError
from backstop.drivers.redact import mask_secrets
from backstop.flows.cli_checks import _check_input
from backstop.flows.cli_flow_commands import (
    cmd_backup,
    cmd_demo,
    cmd_drill,
    cmd_export,
    cmd_prune,
    cmd_rekey,
    cmd_restore,
    cmd_verify,
)
from backstop.flows.cli_local_commands import (
    cmd_deployments,
    cmd_keys,
    cmd_list,
    cmd_metrics,
    cmd_status,
)
from backstop.flows.cli_output import (
    QuietConsoleHandler,  # noqa: F401  where PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS once named it
    _configure_prefect,
    _emit,
    _Reported,
)
from backstop.flows.cli_parser import build_parser
from backstop.flows.signals import Interrupted, exit_if_stuck, stop_on_signals

COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], str]]] = {
    "backup": cmd_backup,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "list": cmd_list,
    "drill": cmd_drill,
    "status": cmd_status,
    "prune": cmd_prune,
    "export": cmd_export,
    "demo": cmd_demo,
    "deployments": cmd_deployments,
    "metrics": cmd_metrics,
    "keys": cmd_keys,
    "rekey": cmd_rekey,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_prefect(args.verbose)
    with stop_on_signals():
        return _run(args)


def run() -> None:
    """The `backstop` executable: main(), then an exit without the interpreter's
    teardown (flows/startup.py exit_now)."""
    from backstop.flows.startup import exit_now

    exit_now(main())


def _get_ready(args: argparse.Namespace) -> dict[str, float]:
    """Once the input is known good: start Prefect's temporary server (unless one is
    configured) and import what the flow needs while it starts."""
    from backstop.flows import startup

    startup.start_server(args.command)
    return startup.prepare(args.command, getattr(args, "technology", None))


def _timed_out(args: argparse.Namespace, exc: Exception) -> int:
    """A run past its flow's time limit is an operation that failed (exit 1), and the
    operator needs the setting that made it, not Prefect's exception name."""
    from backstop.flows.timeouts import DEFAULT_TIMEOUTS_S, timeout_variable

    flow = args.command if args.command in DEFAULT_TIMEOUTS_S else "backup"
    error = (
        f"ran past its time limit ({exc}); the limit of a {flow} is "
        f"{timeout_variable(flow)} seconds (a restore's safety backup: "
        f"{timeout_variable('backup')}; 0: no limit)"
    )
    _emit(args, {"status": "failed", "error": error, "exit_code": 1},
          f"backstop {args.command}: {error}", error=True)  # fmt: skip
    return 1


def _run(args: argparse.Namespace) -> int:
    try:
        _check_input(args)
        startup = _get_ready(args)
        data, text = COMMANDS[args.command](args)
        if startup:  # where the fixed cost went (--json): imports, server start
            data["startup_s"] = startup
    except _Reported as reported:
        _emit(args, reported.data, reported.text, error=True)
        return reported.exit_code
    except BackstopError as exc:
        message = f"backstop {args.command}: {exc}"
        _emit(
            args,
            {"status": "failed", "error": str(exc), "exit_code": exc.exit_code},
            message,
            error=True,
        )
        return exc.exit_code
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (Interrupted): cleaned up by now
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        _emit(args, {"status": "interrupted", "exit_code": code}, "interrupted", error=True)
        exit_if_stuck(code)
        return code
    except Exception as exc:  # a bug or an unclassified failure: exit 1, say what it was
        if type(exc).__name__ == "FlowRunTimeoutError":  # Prefect's flow timeout_seconds
            return _timed_out(args, exc)
        if args.verbose:
            print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="")
        message = f"{type(exc).__name__}: {exc}"
        _emit(
            args,
            {"status": "failed", "error": mask_secrets(message), "exit_code": 1},
            f"backstop {args.command}: unexpected error: {message}",
            error=True,
        )
        return 1
    _emit(args, data, text)
    return 0


if __name__ == "__main__":
    run()
