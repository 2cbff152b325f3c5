"""A command's fixed cost, cut: Prefect's temporary server starts first, the imports
the flow needs happen while it starts, and the process ends without tearing down.

Measured on 2 cores for a 100-cell backup (docs/performance.md, "Fixed cost"): the
temporary server takes seconds to start (more on a fresh PREFECT_HOME, where it
creates its database), importing Prefect ~3 s and Great Expectations ~6 s, and the
interpreter's teardown of those modules 2-9 s after the work is done. Prefect starts
its server only when the flow first calls the API, after every import, and the main
process then sits idle waiting for it. Here the server is started before Prefect is
imported, Great Expectations is imported in the data-quality validator's own process
(tasks/gx_worker.py) while Prefect is imported here, and the command waits for the
server only when it needs it.

No Prefect import at module level: this runs before Prefect is configured.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from backstop.drivers.errors import BackstopError, BadInputError

# How long a command waits for the temporary server. Prefect's own default (20 s) was
# too short under CPU load: a backup failed with an empty message (issue 12).
DEFAULT_STARTUP_TIMEOUT_S = 600.0
STARTUP_TIMEOUT_ENV = "BACKSTOP_SERVER_STARTUP_TIMEOUT"
_PREFECT_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# Where the units run (flows/runtime.py task_runner), read when the flows are imported:
# set by a deployment's job variables, or by the CLI's --runner / --dask-address.
RUNNER_ENV = "BACKSTOP_TASK_RUNNER"  # threads (default) | dask
DASK_ADDRESS_ENV = "BACKSTOP_DASK_ADDRESS"  # a scheduler's address; empty: a LocalCluster
DASK_WORKERS_ENV = "BACKSTOP_DASK_WORKERS"  # the LocalCluster's worker processes
IN_FLIGHT_ENV = "BACKSTOP_IN_FLIGHT"  # task runs submitted at once (runtime.in_flight)
UNITS_PER_TASK_ENV = "BACKSTOP_UNITS_PER_TASK"  # units per task run (runtime.per_task)


def count_from_env(name: str) -> int | None:
    """A whole number of at least 1 from the environment, or None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadInputError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


# What each command imports before its flow runs, beyond Prefect itself.
_FLOW_MODULES = {
    "backup": ["backstop.flows.backup"],
    "restore": ["backstop.flows.restore"],
    "verify": ["backstop.flows.verify"],
    "drill": ["backstop.flows.drill"],
    "prune": ["backstop.flows.prune"],
    "export": ["backstop.flows.export"],
    "rekey": ["backstop.flows.rekey"],
    "demo": ["backstop.flows.backup", "backstop.flows.restore"],
}
# Commands whose flows run a data-quality suite (Great Expectations, the largest import).
_RUN_SUITES = {"backup", "restore", "drill", "demo"}


def runs_a_flow(command: str) -> bool:
    """Whether the command imports flow modules (and so reads their settings)."""
    return command in _FLOW_MODULES


def startup_timeout() -> float:
    """Seconds to wait for the temporary server: BACKSTOP_SERVER_STARTUP_TIMEOUT, else
    Prefect's own setting when the user set it, else 600."""
    for name in (STARTUP_TIMEOUT_ENV, _PREFECT_TIMEOUT_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                seconds = float(value)
            except ValueError:
                raise BackstopError(f"{name} must be a number of seconds, got {value!r}") from None
            if seconds > 0:
                return seconds
    return DEFAULT_STARTUP_TIMEOUT_S


def api_url_configured() -> bool:
    """Whether Prefect is told where its API is (then no temporary server is started).

    Read without importing Prefect, from where Prefect 3 reads it: the environment,
    the active profile, and prefect.toml / pyproject.toml / .env in this folder. Any
    mention counts: in doubt, Prefect decides as it always has.
    """
    if os.environ.get("PREFECT_API_URL", "").strip():
        return True
    if any(_off(os.environ.get(name)) for name in _EPHEMERAL_SWITCHES):
        return True  # ephemeral servers switched off: leave the error to Prefect
    if _profile_sets_api_url():
        return True
    for name in ("prefect.toml", "pyproject.toml", ".env"):
        path = Path(name)
        try:
            text = path.read_text(errors="replace") if path.is_file() else ""
        except OSError:
            continue
        if (
            "PREFECT_API_URL" in text
            or ("[api]" in text and "url" in text)
            or ("tool.prefect" in text and "api" in text)
            or (name != ".env" and _toml_sets_api(text, name))
        ):
            return True
    return False


def _toml_sets_api(text: str, name: str) -> bool:
    """An `api` table in prefect.toml (or [tool.prefect] in pyproject.toml) however
    TOML spells it: `api.url = ...` is a dotted key, with no [api] header."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False  # Prefect cannot read it either
    if name == "pyproject.toml":
        data = data.get("tool", {}).get("prefect", {})
    return isinstance(data, dict) and bool(data.get("api"))


def _profile_sets_api_url() -> bool:
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return True  # unreadable: let Prefect read it its own way
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    settings = profiles.get("profiles", {}).get(active, {})
    if not isinstance(settings, dict):
        return False
    return bool(settings.get("PREFECT_API_URL")) or any(
        _off(settings.get(name)) for name in _EPHEMERAL_SWITCHES
    )


# Prefect 3's two names for "may start a temporary server" (the older one is what its
# default profile sets).
_EPHEMERAL_SWITCHES = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")


def _off(value: object) -> bool:
    return str(value).strip().lower() in ("0", "false") if value is not None else False


# `python -m uvicorn`, first asking Linux to send the server SIGTERM when the command's
# process dies however it dies (kill -9, the OOM killer, a second SIGTERM during the
# exit, exit_if_stuck's os._exit): atexit does not run then, and uvicorn would serve on,
# orphaned. Done in the child before uvicorn starts (no preexec_fn: unsafe with threads);
# argv[1] is the command's pid, to catch a death before prctl took effect.
_UVICORN_TIED_TO_PARENT = """
import os, runpy, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
except (OSError, AttributeError):
    pass  # not Linux: the command's atexit stop only
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def check_prefect_home() -> None:
    """The temporary server keeps its database in PREFECT_HOME: a folder it cannot
    write is said in one line naming it (exit 2), not in the server's traceback."""
    if any(
        os.environ.get(name, "").strip()
        for name in (
            "PREFECT_API_DATABASE_CONNECTION_URL",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        )
    ):
        return  # the database is elsewhere
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder Prefect would create it in
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        try:  # Prefect makes only the last folder (and the server and this process race)
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        except OSError:
            pass
    raise BadInputError(
        f"PREFECT_HOME {home} cannot be written (Prefect's temporary server keeps its "
        "database there): set PREFECT_HOME to a writable folder, or PREFECT_API_URL "
        "to a running Prefect server"
    )


class TemporaryServer:
    """Prefect's temporary API server (the same uvicorn app Prefect's own ephemeral
    mode runs), started by this process on a socket it already holds: no port race,
    and PREFECT_API_URL is known before Prefect is imported."""

    def __init__(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        # Its output is kept for the error message, not mixed into the command's own.
        self._output: IO[bytes] = tempfile.TemporaryFile(prefix="backstop-server-")  # noqa: SIM115 - closed by stop()
        self.started_at = time.perf_counter()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _UVICORN_TIED_TO_PARENT,
                str(os.getpid()),
                "--factory",
                "prefect.server.api.server:create_app",
                "--fd",
                str(listener.fileno()),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            pass_fds=(listener.fileno(),),
            # Its own process group: Ctrl-C at a terminal signals the whole foreground
            # group, and a server stopped at once left the command's cleanup (release,
            # discard) without its API: exit 1 "Connection refused" and a minute of
            # Prefect errors instead of "interrupted". The command stops it at exit.
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
        )
        listener.close()  # the server holds its own copy
        self.ready_s: float | None = None
        self._lock = threading.Lock()

    def wait_ready(self, timeout: float) -> None:
        """Block until the server answers its health check; a clear error if it exits
        or does not answer within `timeout` seconds."""
        with self._lock:
            if self.ready_s is not None:
                return
            deadline = self.started_at + timeout
            while True:
                if self._process.poll() is not None:
                    raise BackstopError(
                        "Prefect's temporary server exited with code "
                        f"{self._process.returncode} before it was ready: {self._tail()}"
                    )
                if self._healthy():
                    self.ready_s = round(time.perf_counter() - self.started_at, 3)
                    return
                if time.perf_counter() >= deadline:
                    raise BackstopError(
                        f"Prefect's temporary server did not start within {timeout:g} s "
                        f"(the machine may be busy): set {STARTUP_TIMEOUT_ENV} to wait "
                        "longer, or run a Prefect server and set PREFECT_API_URL "
                        "(docs/operations.md)"
                    )
                time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self) -> str:
        self._output.seek(0)
        text = self._output.read().decode(errors="replace").strip()
        return text[-2000:] or "(no output)"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._output.close()


_server: TemporaryServer | None = None


def start_server(command: str) -> TemporaryServer | None:
    """Start the temporary server for a command that runs a flow, unless Prefect is
    told of a server. Call before Prefect is imported: it reads PREFECT_API_URL once."""
    global _server
    if command not in _FLOW_MODULES or _server is not None:
        return _server
    if "prefect" in sys.modules or api_url_configured():
        # Prefect already read its settings (a Python caller, the tests), or is told of
        # a server: it decides, as it always has.
        return None
    check_prefect_home()
    _server = TemporaryServer()
    os.environ["PREFECT_API_URL"] = _server.api_url
    # No host limits (tasks/host_limits.py) on it: it keeps leases in memory and expires
    # none, so the slots of a command killed outright (kill -9, OOM) stayed held in
    # PREFECT_HOME's database for ever, and every later command on that host waited for
    # them. One command's connections are bounded by its task threads anyway.
    os.environ["BACKSTOP_HOST_CONNECTIONS"] = "0"
    # Registered before Prefect's own exit handlers, so it runs after them: Prefect
    # sends its last logs and events to the server before the server stops.
    atexit.register(_server.stop)
    return _server


def prepare(command: str, technology: str | None) -> dict[str, float]:
    """Import what the command's flow needs (while the server starts, when one does),
    then wait for the server. Returns the seconds each step took."""
    if command not in _FLOW_MODULES:
        return {}  # list, status: no flow, no Prefect
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[name] = round(now - started, 3)
        started = now

    driver = None
    if technology:
        from backstop.drivers.registry import get_driver

        driver = get_driver(technology)
    on_dask = os.environ.get(RUNNER_ENV, "").strip().lower() == "dask"
    if (
        command in _RUN_SUITES
        and not on_dask  # the suites run on the Dask workers: a validator here is ~230 MB idle
        and (driver is None or driver.quality_suite is not None)
    ):
        # First: Great Expectations imports in its own process while Prefect does here.
        from backstop.tasks.gx_client import validator

        validator()
    step("start_quality_s")
    importlib.import_module("prefect")
    step("import_prefect_s")
    for module in _FLOW_MODULES.get(command, []):
        importlib.import_module(module)
    step("import_flows_s")
    if _server is not None:
        _server.wait_ready(startup_timeout())
        step("wait_server_s")
        timings["server_start_s"] = _server.ready_s or 0.0
    return timings


def exit_now(code: int) -> None:
    """End the process as the interpreter would, minus its teardown.

    Non-daemon threads are waited for and exit handlers run (Prefect's last logs and
    events, the temporary server's stop), output is flushed; what is skipped is freeing
    every module's objects one by one, which took 2-9 s after Great Expectations,
    pandas and Prefect were loaded, with nothing left to do.

    Those last deliveries get EXIT_GRACE_ENV seconds (default 120): a Prefect server that
    went away as the command ended made Prefect's flush retry without end, and the
    command, its work done, never exited. Past the grace the command says so and ends
    with its own exit code; only the undelivered logs and events are lost.
    """
    _exit_anyway_after(exit_grace(), code)
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize runs first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


EXIT_GRACE_ENV = "BACKSTOP_EXIT_GRACE"
DEFAULT_EXIT_GRACE_S = 120.0


def exit_grace() -> float:
    """Seconds a finished command waits for its last logs and events to be delivered."""
    value = os.environ.get(EXIT_GRACE_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_EXIT_GRACE_S
    except ValueError:
        seconds = DEFAULT_EXIT_GRACE_S  # read as the command ends: too late to refuse it
    return seconds if seconds > 0 else DEFAULT_EXIT_GRACE_S


def _exit_anyway_after(seconds: float, code: int) -> None:
    def give_up() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"backstop: the command is done, but its last logs and events were not "
                f"delivered to Prefect within {seconds:g} s (is the Prefect API still "
                f"reachable?); exiting without them ({EXIT_GRACE_ENV} sets the wait)\n"
            )
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True  # not waited for by the shutdown it watches
    timer.start()
