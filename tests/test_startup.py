"""A command's start-up (flows/startup.py): Prefect's temporary server started first,
a clear error when it cannot start in time, nothing of it left behind, and a
configured server used as it is."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backstop.flows import startup

BACKSTOP = str(Path(sys.executable).parent / "backstop")


def _own_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment with a Prefect home of its own and no server configured:
    it starts its temporary server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    # A first run in a folder that does not exist yet: Prefect itself makes only the
    # last folder of PREFECT_HOME.
    env["PREFECT_HOME"] = str(tmp_path / "new" / "prefect-home")
    env.update(extra)
    return env


def _processes_with(marker: str) -> list[int]:
    """Running processes whose environment holds `marker` (this test's Prefect home)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found


def _gone(marker: str, wait_s: float = 10) -> list[int]:
    deadline = time.monotonic() + wait_s
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_backup_with_its_own_temporary_server_leaves_nothing_running(
    tmp_path: Path, datastore_template: list[Path]
) -> None:
    env = _own_env(tmp_path)
    source = f"sqlite:///{datastore_template[0]}"
    proc = subprocess.run(
        [BACKSTOP, "backup", "schemaless", "--source", source, "--store", str(tmp_path / "s"),
         "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["status"] == "completed"
    # The server this command started answered, and is stopped with the command.
    assert outcome["startup_s"]["server_start_s"] > 0
    assert not _gone(env["PREFECT_HOME"]), "the temporary Prefect server outlived the command"
    # It recorded the run, as Prefect's own temporary server does.
    assert (Path(env["PREFECT_HOME"]) / "prefect.db").exists()


def test_a_server_that_does_not_start_in_time_is_a_clear_error_and_is_stopped(
    tmp_path: Path, datastore_template: list[Path]
) -> None:
    env = _own_env(tmp_path, BACKSTOP_SERVER_STARTUP_TIMEOUT="0.001")
    store = tmp_path / "s"
    proc = subprocess.run(
        [BACKSTOP, "backup", "schemaless", "--source", f"sqlite:///{datastore_template[0]}",
         "--store", str(store)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "did not start within 0.001 s" in proc.stderr
    assert "BACKSTOP_SERVER_STARTUP_TIMEOUT" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not _gone(env["PREFECT_HOME"]), "the temporary Prefect server outlived the command"
    assert not store.exists() or not any(store.rglob("manifest.json"))


def _server_of(command: int, wait_s: float = 300) -> int | None:
    """The uvicorn child of the command's process, once it runs."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for pid in Path(f"/proc/{command}/task/{command}/children").read_text().split():
            with contextlib.suppress(OSError):  # a child that has just ended
                if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        time.sleep(0.1)
    return None


def test_a_killed_command_leaves_no_server_running(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) runs no exit handler: the server must still stop."""
    env = _own_env(tmp_path)
    (tmp_path / "s").mkdir()
    proc = subprocess.Popen(
        [BACKSTOP, "verify", "--store", str(tmp_path / "s")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert _server_of(proc.pid) is not None, "the command started no temporary server"
    finally:
        proc.kill()
        proc.wait()
    assert not _gone(env["PREFECT_HOME"], wait_s=30), "the temporary server outlived kill -9"


def _has_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_ctrl_c_at_a_terminal_is_an_interruption_not_a_lost_server(
    tmp_path: Path, shards: list[str]
) -> None:
    """Ctrl-C signals the terminal's whole foreground process group: the temporary
    server must not stop before the command has cleaned up through it."""
    env = _own_env(tmp_path)
    source = Path(shards[0].removeprefix("sqlite:///"))
    holder = sqlite3.connect(source, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the backup waits in its snapshot: the flow runs
    try:
        proc = subprocess.Popen(
            [BACKSTOP, "backup", "schemaless", "--source", shards[0],
             "--store", str(tmp_path / "s"), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,  # a foreground job of its own terminal
        )  # fmt: skip
        try:
            assert _server_of(proc.pid) is not None, "the command started no temporary server"
            deadline = time.monotonic() + 600
            while not _has_open(proc.pid, source) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _has_open(proc.pid, source), "the backup never opened its source"
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        holder.rollback()
        holder.close()
    assert json.loads(out)["status"] == "interrupted", (out, err[-3000:])
    assert proc.returncode == 128 + signal.SIGINT
    assert not any((tmp_path / "s").rglob("manifest.json"))
    assert not _gone(env["PREFECT_HOME"], wait_s=30), "the temporary server outlived the command"


def test_bad_input_starts_no_server(tmp_path: Path) -> None:
    env = _own_env(tmp_path)
    proc = subprocess.run(
        [BACKSTOP, "backup", "schemaless", "--source", "nosuch://x", "--store", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert not Path(env["PREFECT_HOME"]).exists()  # Prefect never started


def test_a_prefect_home_that_cannot_be_written_is_named_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = tmp_path / "s"
    env = _own_env(tmp_path)
    env["PREFECT_HOME"] = str(blocker / "prefect-home")
    proc = subprocess.run(
        [BACKSTOP, "verify", "--store", str(store)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"PREFECT_HOME {blocker / 'prefect-home'} cannot be written" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "where",
    [
        "environment",
        "profile",
        "prefect.toml",
        "prefect.toml-dotted",
        "dotenv",
        "ephemeral-off",
        "ephemeral-off-older-name",
        "ephemeral-off-in-profile",
    ],
)
def test_a_configured_prefect_server_is_used_as_it_is(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH",
                 "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert not startup.api_url_configured()
    if where == "environment":
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    elif where == "profile":
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "profiles.toml").write_text(
            'active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "http://prefect:4200/api"\n'
        )
    elif where == "prefect.toml":
        (tmp_path / "prefect.toml").write_text('[api]\nurl = "http://prefect:4200/api"\n')
    elif where == "prefect.toml-dotted":  # TOML's other spelling of [api] url = ...
        (tmp_path / "prefect.toml").write_text('api.url = "http://prefect:4200/api"\n')
    elif where == "dotenv":
        (tmp_path / ".env").write_text("PREFECT_API_URL=http://prefect:4200/api\n")
    elif where == "ephemeral-off-older-name":
        monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    elif where == "ephemeral-off-in-profile":
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "profiles.toml").write_text(
            'active = "ops"\n[profiles.ops]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "false"\n'
        )
    else:
        monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
    assert startup.api_url_configured()


def test_the_startup_wait_is_generous_and_settable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (startup.STARTUP_TIMEOUT_ENV, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert startup.startup_timeout() == startup.DEFAULT_STARTUP_TIMEOUT_S >= 600
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    assert startup.startup_timeout() == 90
    monkeypatch.setenv(startup.STARTUP_TIMEOUT_ENV, "1200")
    assert startup.startup_timeout() == 1200


def test_a_finished_command_exits_with_its_code_when_its_last_logs_cannot_be_delivered() -> None:
    """Prefect's flush of its last logs and events, retrying against a server that went
    away, held a finished command forever (found by the scale benchmarks). Here an exit
    handler and a worker thread that never end stand in for that flush."""
    script = (
        "import atexit, threading, time\n"
        "from backstop.flows.startup import exit_now\n"
        "atexit.register(time.sleep, 3600)\n"
        "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
        "exit_now(3)\n"
    )
    env = {**os.environ, startup.EXIT_GRACE_ENV: "2"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3
    assert "last logs and events were not delivered" in done.stderr
    assert startup.EXIT_GRACE_ENV in done.stderr
