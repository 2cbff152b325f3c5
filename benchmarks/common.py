"""What every benchmark script shares: running the real `backstop` command as a user does
(with a running Prefect server, and with Prefect's temporary server on a warm
PREFECT_HOME), timing it from start to exit with its peak RSS, and timing a peer tool
the same way.

Peak RSS is reported two ways (both in MB):
- `rss_mb`: GNU time's %M, the largest resident set of the command's process or of any
  child it waited for (Linux's ru_maxrss is a maximum, not a sum). With the temporary
  Prefect server that child is the server (a separate uvicorn process), so %M is
  max(CLI, temporary server), never their sum.
- `tree_rss_mb`: the largest sum of the resident sets of the command and all its
  descendants, sampled every 0.2 s (psutil): what the machine must hold at once. The
  CLI's own share at that moment is `cli_rss_at_peak_mb`.
A running `prefect server` is not the command's child: it is not in either figure (it is
shared by every command run against it) and is reported once as `server_rss_mb`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's server launchers

from servers.process import free_port  # noqa: E402

# The virtualenv's console script: the command a user runs.
BACKSTOP = Path(sys.executable).with_name("backstop")
PREFECT = Path(sys.executable).with_name("prefect")
MODES = ("server", "temporary")
MODE_TITLES = {
    "server": "running `prefect server` (PREFECT_API_URL)",
    "temporary": "temporary Prefect server, warm PREFECT_HOME",
    "fresh": "temporary Prefect server, fresh PREFECT_HOME",
}
# Prefect's temporary server can take minutes to start on a loaded 2-core machine (over
# 600 s was seen at a load average of 45); a benchmark run must not fail for that.
STARTUP_WAIT = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1800",
    "BACKSTOP_SERVER_STARTUP_TIMEOUT": "1800",
}


def modes_arg(value: str) -> list[str]:
    """--modes server,temporary: which Prefect set-ups to time the CLI under."""
    modes = [m for m in value.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise SystemExit(f"--modes takes {', '.join(MODES)}; got {value!r}")
    return modes


def sizes_arg(value: str) -> list[int]:
    """--sizes 100000,1000000 (or 10k,1M): scales to measure, smallest first."""
    factors = {"k": 1_000, "m": 1_000_000}
    sizes = []
    for part in value.lower().split(","):
        part = part.strip().replace("_", "")
        factor = factors.get(part[-1:], 1)
        sizes.append(int(float(part.rstrip("km")) * factor))
    return sorted(sizes)


# -- the Prefect set-ups -----------------------------------------------------------------


class PrefectServer:
    """`prefect server start` on a free port with its own PREFECT_HOME, for one session."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float = 1800) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = clean_env(PREFECT_HOME=str(self.home), PREFECT_UI_ENABLED="false")
        argv = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as log:
            # Its own process group, so stopping it also stops the workers it spawns.
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"prefect server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"prefect server did not answer within {timeout} s")

    def rss_mb(self) -> float:
        """The server's resident set now, with its worker processes."""
        if self.process is None:
            return 0.0
        root = psutil.Process(self.process.pid)
        return round(sum(p.memory_info().rss for p in [root, *root.children(True)]) / 2**20, 1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Prefect API/home setting a developer may have, plus
    `extra`: each mode decides where Prefect runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **STARTUP_WAIT, **extra}


class PrefectModes:
    """The ways a user runs the CLI: `server` (PREFECT_API_URL at a running `prefect
    server`, started here for the session) and `temporary` (Prefect starts its temporary
    server per command, on a PREFECT_HOME already initialised by a warm-up command)."""

    def __init__(self, work: Path, modes: list[str]) -> None:
        self.work = work
        self.modes = modes
        self.server: PrefectServer | None = None
        self.server_rss: list[float] = []

    def __enter__(self) -> PrefectModes:
        # `timeout` and `kill` send SIGTERM: unwind (stopping this server and the
        # scripts' database servers in their `finally`) instead of orphaning them.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            if "server" in self.modes:
                self.server = PrefectServer(self.work / "prefect-server")
                self.server.start()
            if "temporary" in self.modes:
                warm_up(self.env("temporary"), self.work / "warm-up")
            if self.server:
                warm_up(self.env("server"), self.work / "warm-up")
        except BaseException:
            self.__exit__()  # a failed warm-up must not leave the server running
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server:
            self.server.stop()

    def env(self, mode: str) -> dict[str, str]:
        if mode == "server":
            assert self.server is not None
            return clean_env(
                PREFECT_HOME=str(self.work / "prefect-client"), PREFECT_API_URL=self.server.api_url
            )
        if mode == "temporary":
            return clean_env(PREFECT_HOME=str(self.work / "prefect-temporary"))
        raise ValueError(mode)

    def note_server_rss(self) -> None:
        """Sample the running server's RSS (after a command): its peak goes in the report."""
        if self.server:
            self.server_rss.append(self.server.rss_mb())

    def server_note(self) -> str:
        if not self.server_rss:
            return ""
        return (
            f" The running `prefect server` (not part of any command's RSS) held up to "
            f"{max(self.server_rss)} MB, sampled after each command."
        )


def fresh_env(home: Path) -> dict[str, str]:
    """The temporary server on a PREFECT_HOME that does not exist yet (a first command)."""
    return clean_env(PREFECT_HOME=str(home))


def warm_up(env: dict[str, str], work: Path) -> None:
    """One small backup, so the PREFECT_HOME's database exists and is migrated (and the
    OS has the code in its page cache) before anything is timed."""
    from backstop.flows.demo import make_schemaless_datastore

    shutil.rmtree(work, ignore_errors=True)
    [source] = make_schemaless_datastore(work / "source", shards=1, cells=10)
    run_cli(["backup", "schemaless", "--source", source, "--store", str(work / "store")], env)
    shutil.rmtree(work, ignore_errors=True)


# -- timing one command ------------------------------------------------------------------


class TreeSampler(threading.Thread):
    """The peak of the summed RSS of a process's descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stopped = threading.Event()
        self.peak = 0
        self.main_at_peak = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stopped.wait(0.2):
            try:
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            sizes = []
            for child in children:
                try:
                    sizes.append((child.ppid() == self.pid, child.memory_info().rss))
                except psutil.NoSuchProcess:
                    continue
            total = sum(rss for _, rss in sizes)
            if total > self.peak:
                self.peak = total
                self.main_at_peak = sum(rss for direct, rss in sizes if direct)


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run argv under GNU time: wall seconds (start to exit), %M and the sampled tree
    peak; stdout and stderr as text. Raises SystemExit with stderr's tail on failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}"
        )
    lines = stderr.splitlines()
    rss_kb = next(int(x.split("=", 1)[1]) for x in reversed(lines) if x.startswith("maxrss_kb="))
    return {
        "wall_s": round(wall, 3),
        "rss_mb": round(rss_kb / 1024, 1),
        "tree_rss_mb": round(sampler.peak / 2**20, 1),
        "cli_rss_at_peak_mb": round(sampler.main_at_peak / 2**20, 1),
        "stdout": stdout,
        "stderr": stderr,
    }


def run_cli(args: list[str], env: dict[str, str]) -> dict:
    """`backstop <args> --json` as a subprocess: its JSON outcome (duration_s and
    phases_s are the in-flow figures) plus wall_s and the RSS figures of `timed`."""
    run = timed([str(BACKSTOP), *args, "--json"], env)
    outcome = json.loads(run.pop("stdout").strip().splitlines()[-1])
    run.pop("stderr")
    return {**outcome, **run}


def timed_peer(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one run of a peer tool; argv may be
    ["bash", "-c", "a | b"], whose %M is then the largest process of the pipeline."""
    run = timed(argv)
    return run["wall_s"], run["rss_mb"]


def timed_shell(command: str) -> tuple[float, float]:
    return timed_peer(["bash", "-c", command])


# -- reporting ---------------------------------------------------------------------------


def ratio(peer_s: float | None, ours_s: float | None) -> float | None:
    """peer / backstop: above 1 means backstop is faster."""
    if not peer_s or not ours_s:
        return None
    return round(peer_s / ours_s, 2)


def median_run(runs: list[dict], key: str = "wall_s") -> dict:
    """The run with the median `key` (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def cli_fields(prefix: str, run: dict) -> dict:
    """The per-command figures a row records, under `prefix`_*."""
    return {
        f"{prefix}_wall_s": run["wall_s"],
        f"{prefix}_flow_s": run["duration_s"],
        f"{prefix}_phases_s": run.get("phases_s", {}),
        # The CLI's own account of its start-up, where it reports one.
        f"{prefix}_startup_s": run.get("startup_s", {}),
        f"{prefix}_rss_mb": run["rss_mb"],
        f"{prefix}_tree_rss_mb": run["tree_rss_mb"],
    }


RSS_KEYS = ["backup_rss_mb", "backup_tree_rss_mb", "restore_rss_mb", "restore_tree_rss_mb"]


def report_tail(rows: list[dict], group: str, size: str, data: object = None) -> str:
    """The end of every results file: peak-RSS growth from the smallest size to the
    largest (when there are two), then the measurements as JSON (`data`, else `rows`)."""
    lines = []
    if growth := rss_growth(rows, group, size, RSS_KEYS):
        lines += ["", "Peak RSS growth:", "", *growth]
    json_data = rows if data is None else data
    return "\n".join([*lines, "", "```json", json.dumps(json_data, indent=1), "```", ""])


def rss_growth(rows: list[dict], group: str, size: str, keys: list[str]) -> list[str]:
    """Lines: peak RSS at the largest size over the smallest, per group and mode (the
    target: at most 1.2x from 100k to 1M records)."""
    lines = []
    for name in dict.fromkeys(r[group] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            sized = sorted(
                (r for r in rows if r[group] == name and r["mode"] == mode), key=lambda r: r[size]
            )
            if len(sized) < 2:
                continue
            small, large = sized[0], sized[-1]
            parts = [
                f"{key.removesuffix('_rss_mb').replace('_', ' ')} "
                f"{large[key]} / {small[key]} MB = {large[key] / small[key]:.2f}x"
                for key in keys
                if small.get(key) and large.get(key)
            ]
            lines.append(
                f"- {name}, {mode}: peak RSS at {large[size]:,} over {small[size]:,}: "
                + "; ".join(parts)
                + " (target: at most 1.2x)"
            )
    return lines


def machine_line() -> str:
    """Date, machine, load average and the commit measured (with a dirty-tree flag)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    state = " plus uncommitted changes in the working tree" if dirty else ""
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}), load average "
        f"{load} (1, 5, 15 min) at the end of the run, commit {commit}{state}."
    )


RSS_NOTE = (
    "RSS: *RSS MB* is GNU time's %M for the command, the largest resident set of the CLI "
    "process or of a child it waited for (with the temporary server: max(CLI, server), not "
    "their sum); *tree RSS MB* is the peak of the summed resident sets of the command and "
    "all its descendants (CLI + temporary server), sampled every 0.2 s."
)


def markdown_table(columns: list[tuple[str, str]], rows: list[dict]) -> list[str]:
    """Lines of a Markdown table: (key, title) columns, integers with thousands commas."""

    def cell(value: object) -> str:
        if value is None:
            return "—"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in value.items())
        return str(value)

    return [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows),
    ]


@contextmanager
def section(title: str) -> Iterator[None]:
    """Print a progress marker around a slow step (the runs take minutes)."""
    started = time.perf_counter()
    print(f"-- {title}", flush=True)
    yield
    print(f"   {title}: {time.perf_counter() - started:.1f} s", flush=True)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)
