"""What an operator can get wrong around deployments, refused with exit 2 and one line
naming the problem, before anything slow starts: `backstop deployments init` into a
place it cannot or must not write, and a flow timeout variable that is not a usable
number of seconds (nan, inf and values past the alarm timer's range used to pass and
crash every run inside Prefect's timeout)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backstop.drivers.errors import BadInputError
from backstop.flows.timeouts import MAX_TIMEOUT_S, flow_timeout

BACKSTOP = str(Path(sys.executable).parent / "backstop")


def _backstop(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The console script where Prefect cannot work (its API on a closed port, its home
    unmade): a check that happens first never notices."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOP_", "PREFECT_"))}
    clean |= {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "ph")}
    return subprocess.run(
        [BACKSTOP, *argv], env=clean | env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("raw", ["soon", "nan", "inf", "-1", "1e12", str(MAX_TIMEOUT_S + 1)])
def test_a_timeout_that_is_no_usable_number_of_seconds_is_refused(monkeypatch, raw):
    monkeypatch.setenv("BACKSTOP_RESTORE_TIMEOUT_S", raw)
    with pytest.raises(BadInputError, match=r"^BACKSTOP_RESTORE_TIMEOUT_S="):
        flow_timeout("restore")


@pytest.mark.parametrize(
    ("raw", "seconds"), [("", 12 * 3600.0), ("0", None), (" 90 ", 90.0), ("1.5", 1.5)]
)
def test_a_timeout_is_read_as_seconds_with_0_for_none(monkeypatch, raw, seconds):
    monkeypatch.setenv("BACKSTOP_RESTORE_TIMEOUT_S", raw)
    found = flow_timeout("restore")
    assert found == seconds and (found is None or math.isfinite(found))


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("BACKSTOP_BACKUP_TIMEOUT_S", "nan"), ("BACKSTOP_BACKUP_TIMEOUT_S", "soon"),
     ("BACKSTOP_RESTORE_TIMEOUT_S", "inf")],
)  # fmt: skip
def test_the_command_refuses_a_bad_timeout_before_prefect(tmp_path, variable, raw):
    db = tmp_path / "data.db"
    argv = ["backup", "schemaless", "--source", f"sqlite:///{db}", "--store", str(tmp_path / "s")]
    result = _backstop(argv, tmp_path, **{variable: raw})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"backstop backup: {variable}={raw!r}: expected seconds from 0 (no timeout) "
        f"to {MAX_TIMEOUT_S}"
    ]
    assert not (tmp_path / "ph").exists(), "Prefect was imported before the refusal"


def _place(tmp_path: Path, case: str) -> tuple[str, list[str]]:
    """Make the case's DIR; returns it and any flags."""
    if case == "dangling-link":
        (tmp_path / "ops").symlink_to(tmp_path / "nowhere")
    elif case == "template-is-a-link":  # with --force it would have written through it
        (tmp_path / "ops").mkdir()
        (tmp_path / "ops" / "prefect.yaml").symlink_to(tmp_path / "victim")
        return str(tmp_path / "ops"), ["--force"]
    elif case == "template-is-a-folder":
        (tmp_path / "ops" / "automations.yaml").mkdir(parents=True)
        return str(tmp_path / "ops"), ["--force"]
    elif case == "under-a-file":
        (tmp_path / "file").write_text("x")
        return str(tmp_path / "file" / "ops"), []
    elif case == "empty":
        return "", []
    return str(tmp_path / "ops"), []


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("dangling-link", "is a symbolic link to nothing"),
        ("template-is-a-link", "prefect.yaml is a symbolic link; remove it first"),
        ("template-is-a-folder", "automations.yaml is a folder; remove it first"),
        ("under-a-file", "cannot write the templates in"),
        ("empty", "DIR is empty"),
    ],
)
def test_deployments_init_refuses_a_place_it_cannot_write(tmp_path, monkeypatch, case, fragment):
    monkeypatch.chdir(tmp_path)  # an empty DIR would have meant the current folder
    folder, flags = _place(tmp_path, case)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = _backstop(["deployments", "init", folder, *flags], tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("backstop deployments: ") and fragment in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "something was written"
    assert not (tmp_path / "victim").exists()


def test_deployments_init_prints_a_cd_line_that_works_pasted(tmp_path):
    folder = tmp_path / "ops it's"
    result = _backstop(["deployments", "init", str(folder)], tmp_path)
    assert result.returncode == 0, result.stderr
    (cd,) = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("cd ")]
    shown = subprocess.run(["sh", "-c", f"{cd} && pwd"], capture_output=True, text=True)
    assert shown.stdout.strip() == str(folder), shown.stderr
    assert sorted(p.name for p in folder.iterdir()) == [
        ".env.example", "automations.yaml", "prefect.yaml"
    ]  # fmt: skip


def test_serve_reads_schedules_as_prefect_deploy_does(tmp_path):
    """An operator's prefect.yaml, served: a schedule switched off stays off (it used to
    be served active), and an interval schedule is one (it used to be a KeyError)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deployments"))
    from serve import load_deployments

    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(
        "deployments:\n"
        "  - name: paused\n"
        "    entrypoint: backstop.flows.prune.prune\n"
        "    schedules: [{cron: '5 * * * *', timezone: UTC, active: false}]\n"
        "  - name: every-hour\n"
        "    entrypoint: backstop.flows.prune.prune\n"
        "    schedules: [{interval: 3600}]\n"
    )
    paused, hourly = load_deployments(prefect_file)
    assert [(s.schedule.cron, s.active) for s in paused.schedules] == [("5 * * * *", False)]
    assert [s.schedule.interval.total_seconds() for s in hourly.schedules] == [3600]


@pytest.mark.parametrize("case", ["two-wheels", "no-wheel"])
def test_the_worker_install_script_refuses_what_is_not_one_wheel(tmp_path, case):
    """The Dockerfile runs install.sh with dist/backstop-*.whl: an older wheel left in
    dist/ made the second one the EXTRAS argument."""
    wheels = [
        tmp_path / "backstop-0.1.0-py3-none-any.whl",
        tmp_path / "backstop-0.2.0-py3-none-any.whl",
    ]
    if case == "two-wheels":
        for wheel in wheels:
            wheel.write_bytes(b"")
    script = Path(__file__).resolve().parent.parent / "deployments" / "worker" / "install.sh"
    refused = subprocess.run(
        ["sh", str(script), str(tmp_path / "venv"), *map(str, wheels[: 2 if case == "two-wheels" else 1])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("install.sh: "), refused.stderr
    assert not (tmp_path / "venv").exists()


def test_serve_needs_the_operators_prefect_file():
    """Without --prefect-file, serve used to read the shipped template and schedule
    hourly backups of its example hosts (zk1.internal, ...)."""
    serve = Path(__file__).resolve().parent.parent / "deployments" / "serve.py"
    refused = subprocess.run(
        [sys.executable, str(serve)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--prefect-file" in refused.stderr
