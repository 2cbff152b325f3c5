"""backstop run as a service from its wheel alone, as an operator would: the wheel built,
installed by deployments/worker/install.sh (the Dockerfile's steps) into a fresh venv in
another folder, `backstop deployments init` + `prefect deploy` against a real Prefect
server, a real process worker running a scheduled backup, a restore started through the
REST API with form-shaped parameters, then a drill; no source tree on sys.path or as the
working directory. Also: the worker packaging files (systemd units, the Kubernetes base
job template) and the .env template's completeness."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import server_unavailable
from servers.process import stop

from backstop.flows.demo import make_schemaless_datastore

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
SECRET_VALUE = f"wheel-token-{uuid.uuid4().hex}"  # only in the worker's environment
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass
class Installed:
    venv: Path
    python: Path
    env: dict[str, str]  # a clean environment pointing at the Prefect server
    work: Path  # the folder the commands run in: no source tree


def _copy_source(destination: Path) -> Path:
    """The package as the working tree holds it, without what is not part of it (a build
    in place would leave build/ and egg-info in the repository)."""
    ignored = shutil.ignore_patterns(
        ".venv", ".git", "tests", "benchmarks", "docs", "build", "dist", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    )  # fmt: skip
    shutil.copytree(ROOT, destination, ignore=ignored)
    return destination


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600):
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )  # fmt: skip
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _clean_env(venv: Path, home: Path) -> dict[str, str]:
    """The environment of a machine where backstop is only installed: no PYTHONPATH, no
    Prefect or backstop settings of the test session, the venv first on PATH."""
    drop = ("PREFECT_", "BACKSTOP_", "PYTHON", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["HOME"] = str(home)
    env["PREFECT_HOME"] = str(home / ".prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, prefect_harness: str) -> Installed:
    """The wheel, built from a copy of the tree, installed by install.sh into a new venv
    whose dependencies are this test venv's site-packages (a .pth file: no download)."""
    base = tmp_path_factory.mktemp("wheel")
    source = _copy_source(base / "src")
    dist = base / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(source)],
        env=dict(os.environ), cwd=base,
    )  # fmt: skip
    (wheel,) = dist.glob("backstop-*.whl")
    shutil.rmtree(source)  # nothing of the source tree is left to import from
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env=dict(os.environ), cwd=base)
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )  # fmt: skip
    (site / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"
    work.mkdir()
    env = _clean_env(venv, base / "home") | {"PREFECT_API_URL": prefect_harness}
    script = ROOT / "deployments" / "worker" / "install.sh"
    _run(
        ["sh", str(script), str(venv), str(wheel)],
        env=env | {"PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1"}, cwd=work,
    )  # fmt: skip
    return Installed(venv, venv / "bin" / "python", env, work)


def test_backstop_is_imported_from_the_new_venv(installed: Installed):
    found = _run(
        [str(installed.python), "-c", "import backstop, json, sys; print(backstop.__file__); print(json.dumps(sys.path))"],
        env=installed.env, cwd=installed.work,
    ).stdout.splitlines()  # fmt: skip
    location = Path(found[0]).resolve()
    assert location.is_relative_to(installed.venv.resolve()), location
    assert not location.is_relative_to(ROOT)
    assert not any(p and Path(p).resolve() == ROOT for p in json.loads(found[1]))


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("wheel-data")
    return {
        "sources": make_schemaless_datastore(folder / "source", shards=2, cells=2_000),
        "store": (folder / "store").as_uri(),
        "folder": folder,
    }


@dataclass
class Service:
    api: str
    pool: str
    deployments: dict[str, dict]
    worker_log: Path


def _api(api: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One REST call, retried as Prefect's own client retries it: a busy server (its
    SQLite database locked under load) answers 503 and has done nothing."""
    for attempt in range(6):
        response = httpx.request(method, f"{api}{path}", timeout=30, **kwargs)
        if response.status_code not in (429, 502, 503):
            break
        time.sleep(2**attempt)
    assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text}"
    return response


@pytest.fixture(scope="module")
def service(installed: Installed, datastore: dict, prefect_harness: str) -> Iterator[Service]:
    """`backstop deployments init`, the template edited as an operator would (a work pool
    of this test's own, the SQLite shards, a local store), `prefect deploy --all`, and one
    process worker of the installed package polling the pool."""
    ops = installed.work / "ops"
    python = str(installed.python)
    backstop = str(installed.venv / "bin" / "backstop")  # the wheel's console script
    _run([backstop, "deployments", "init", str(ops)], installed.env, installed.work)
    pool = f"backstop-{uuid.uuid4().hex[:8]}"
    config = yaml.safe_load((ops / "prefect.yaml").read_text())
    for entry in config["deployments"]:
        entry["work_pool"]["name"] = pool
        for schedule in entry.get("schedules", []):
            schedule["active"] = False  # no cron run against the template's hosts
        request = entry["parameters"]["request"]
        request["store"] = {"url": datastore["store"]}
        if entry["name"] == "schemaless-nightly":
            request["sources"] = datastore["sources"]
            request["incremental"] = False
    (ops / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _run(
        [python, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
        installed.env,
        ops,
    )
    _run([python, "-m", "prefect", "--no-prompt", "deploy", "--all"], installed.env, ops)
    found = _api(prefect_harness, "POST", "/deployments/filter",
                 json={"work_pools": {"name": {"any_": [pool]}}}).json()  # fmt: skip
    worker_log = installed.work / "worker.log"
    log = open(worker_log, "ab")  # noqa: SIM115 - closed by stop()
    worker_env = installed.env | {
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "WHEEL_STORE_TOKEN": SECRET_VALUE,
        "BACKSTOP_QUALITY_PROCESS": "0",  # one process per run: cheaper on 2 cores
    }
    worker = subprocess.Popen(
        [python, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
        env=worker_env, cwd=installed.work, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield Service(prefect_harness, pool, {d["name"]: d for d in found}, worker_log)
    finally:
        stop(worker, log)


def _start(service: Service, deployment: str, parameters: dict | None = None, **body) -> str:
    deployment_id = service.deployments[deployment]["id"]
    payload = body | ({"parameters": parameters} if parameters is not None else {})
    run = _api(service.api, "POST", f"/deployments/{deployment_id}/create_flow_run", json=payload)
    return run.json()["id"]


def _finished(service: Service, run_id: str, timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _api(service.api, "GET", f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in FINAL:
            return run
        assert time.monotonic() < deadline, (
            f"run {run['name']} still {run['state']['type']}: "
            + service.worker_log.read_text(errors="replace")[-3000:]
        )
        time.sleep(1)


def _completed(service: Service, run_id: str) -> dict:
    run = _finished(service, run_id)
    assert run["state"]["type"] == "COMPLETED", (
        f"{run['name']}: {run['state']['message']}\n"
        + service.worker_log.read_text(errors="replace")[-4000:]
    )
    return run


def _run_logs(service: Service, run_id: str) -> str:
    found = _api(service.api, "POST", "/logs/filter",
                 json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()  # fmt: skip
    return "\n".join(log["message"] for log in found)


def _cells(url: str) -> list[tuple]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT * FROM cells ORDER BY added_id").fetchall()


def test_every_template_deployment_is_deployed_from_the_installed_package(service: Service):
    template = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert sorted(service.deployments) == sorted(e["name"] for e in template["deployments"])
    for name, deployment in service.deployments.items():
        assert ":" not in deployment["entrypoint"], deployment["entrypoint"]  # a module path
        assert deployment["path"] is None, name  # no deploying folder recorded
        assert deployment["pull_steps"] == [
            {"backstop.deployments.steps.use_installed_package": {}}
        ], name
        assert deployment["global_concurrency_limit"]["limit"] == 1, name
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE", name
        manual = "manual" in deployment["tags"]
        assert bool(deployment["schedules"]) != manual, name
        # The parameters render as the flow's form: the request model in the schema.
        schema = deployment["parameter_openapi_schema"]
        assert schema["required"] == ["request"], name
    assert {"restore", "verify", "drill"} <= {
        n for n, d in service.deployments.items() if "manual" in d["tags"]
    }


def test_scheduled_backup_restore_from_the_api_and_drill_on_a_process_worker(
    service: Service, datastore: dict, installed: Installed
):
    # A scheduled run of the nightly backup, as the scheduler would create it.
    _run(
        [str(installed.python), "-m", "prefect", "deployment", "run",
         "backstop-backup/schemaless-nightly"],
        installed.env, installed.work,
    )  # fmt: skip
    runs = _api(service.api, "POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [service.deployments["schemaless-nightly"]["id"]]}}
    }).json()  # fmt: skip
    _completed(service, runs[0]["id"])
    store = Path(datastore["folder"]) / "store" / "schemaless"
    (manifest_path,) = store.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["role"] == "scheduled"
    # The run imported backstop from the venv's site-packages: its pull step says where.
    logs = _run_logs(service, runs[0]["id"])
    location = re.search(r"backstop \S+ from (\S+)", logs)
    assert location, logs[-3000:]
    assert Path(location.group(1)).is_relative_to(installed.venv.resolve())

    # A restore as the UI form posts it: the request model's fields, a secret by reference.
    targets = [f"sqlite:///{datastore['folder']}/restored{i}.db" for i in range(2)]
    request = {
        "technology": "schemaless",
        "store": {"url": datastore["store"], "options": {"token": "${env:WHEEL_STORE_TOKEN}"}},
        "targets": targets,
        "backup": "latest",
        "sources": datastore["sources"],
        "mode": "fail-if-exists",
        "include": [],
        "until": None,
        "rename": {},
        "options": {},
        "dry_run": False,
        "force": False,
        "safety_backup": True,
    }
    restore_id = _start(service, "restore", {"request": request})
    restored = _completed(service, restore_id)
    stored = json.dumps(restored["parameters"])
    assert "${env:WHEEL_STORE_TOKEN}" in stored and SECRET_VALUE not in stored
    assert SECRET_VALUE not in _run_logs(service, restore_id)
    for source, target in zip(datastore["sources"], targets, strict=True):
        assert _cells(target) == _cells(source)  # cell for cell, every column

    scratch = [f"sqlite:///{datastore['folder']}/scratch{i}.db" for i in range(2)]
    drill = _completed(service, _start(service, "drill", {"request": {
        "technology": "schemaless", "sources": datastore["sources"], "scratch": scratch,
        "store": {"url": datastore["store"]},
    }}))  # fmt: skip
    assert drill["state"]["type"] == "COMPLETED"
    for source, copy in zip(datastore["sources"], scratch, strict=True):
        assert _cells(copy) == _cells(source)


def test_two_runs_of_one_deployment_do_not_run_together(service: Service):
    """Both due at the same moment, the worker submits both; the deployment's
    concurrency limit holds the second until the first has finished."""
    due = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    scheduled = {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}}}
    ids = [_start(service, "verify", **scheduled) for _ in range(2)]
    runs = sorted((_completed(service, i) for i in ids), key=lambda r: r["start_time"])
    first, second = runs
    when = datetime.fromisoformat
    assert when(first["end_time"]) <= when(second["start_time"]), (first, second)
    states = _api(service.api, "GET", "/flow_run_states/",
                  params={"flow_run_id": second["id"]}).json()  # fmt: skip
    assert "AwaitingConcurrencySlot" in [s["name"] for s in states], [s["name"] for s in states]


# -- the worker packaging files --------------------------------------------------------
def test_the_systemd_units_verify_against_the_installed_commands(installed: Installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        server_unavailable("systemd-analyze is not installed (Debian's systemd package)")
    units = []
    for unit in sorted((ROOT / "deployments" / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/backstop", str(installed.venv))
        units.append(tmp_path / unit.name)
        units[-1].write_text(text)
    assert [u.name for u in units] == ["backstop-serve.service", "backstop-worker.service"]
    checked = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True)
    # verify exits 0 on an unknown key, but says so: any output is a finding.
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr


def _peak_rss_mb() -> float:
    """The largest peak RSS of a backup or restore in the recorded benchmarks, as a
    worker's pod holds it: the command's own (`*_rss_mb`), and the whole process tree
    (`*_tree_rss_mb`: the command and its validator) where it ran against a running
    Prefect server, as a pod does; a tree with Prefect's temporary server in it is not
    what a pod runs."""
    peaks = []

    def visit(value: object) -> None:
        if isinstance(value, dict):
            on_server = value.get("mode", value.get("set_up")) == "server"
            for key, item in value.items():
                if re.fullmatch(r"(?:backup|restore)_rss_mb", key) or (
                    on_server and re.fullmatch(r"(?:backup|restore)_tree_rss_mb", key)
                ):
                    peaks.append(float(item))
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    for report in (ROOT / "benchmarks" / "results").glob("*.md"):
        for block in re.findall(r"```json\n(.*?)\n```", report.read_text(), re.S):
            visit(json.loads(block))
    assert peaks, "no peak RSS in benchmarks/results"
    return max(peaks)


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


def test_the_kubernetes_base_job_template_is_accepted_and_sized_from_the_peak_rss(
    prefect_harness: str,
):
    from prefect.utilities.templating import apply_values

    template = json.loads((ROOT / "deployments/kubernetes/base-job-template.json").read_text())
    # The server checks every placeholder against the variables schema.
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    _api(prefect_harness, "POST", "/work_pools/",
         json={"name": name, "type": "kubernetes", "base_job_template": template})  # fmt: skip
    stored = _api(prefect_harness, "GET", f"/work_pools/{name}").json()
    assert stored["base_job_template"] == template
    # Rendered with the defaults, the manifest has what the Kubernetes worker requires
    # of a job (prefect-kubernetes' _get_base_job_manifest) and the sized requests.
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    manifest = apply_values(template["job_configuration"]["job_manifest"], defaults)
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"
    requested = _mebibytes(container["resources"]["requests"]["memory"])
    limit = _mebibytes(container["resources"]["limits"]["memory"])
    assert _peak_rss_mb() * 1.25 <= requested < limit


# -- the templates -----------------------------------------------------------------------
def test_the_env_template_lists_every_backstop_setting_the_code_reads():
    from backstop.flows.timeouts import DEFAULT_TIMEOUTS_S, timeout_variable

    read = set()
    for folder in ("drivers", "tasks", "flows", "deployments"):
        for module in (ROOT / folder).rglob("*.py"):
            read |= set(re.findall(r"\bBACKSTOP_[A-Z0-9_]*[A-Z0-9]\b", module.read_text()))
    read |= {timeout_variable(flow) for flow in DEFAULT_TIMEOUTS_S}
    read.discard("BACKSTOP_SECRET")  # BACKSTOP_SECRET_<n>: the CLI's own, not a setting
    listed = (ROOT / "deployments" / "env.example").read_text()
    missing = sorted(name for name in read if not re.search(rf"^#?{name}=", listed, re.M))
    assert not missing, f"settings missing from deployments/env.example: {missing}"
    for flow, seconds in DEFAULT_TIMEOUTS_S.items():
        assert f"{timeout_variable(flow)}={seconds}\n" in listed


def test_deployments_init_refuses_to_overwrite_unless_forced(installed: Installed, tmp_path):
    backstop = str(installed.venv / "bin" / "backstop")
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "automations.yaml").write_text("mine\n")
    refused = subprocess.run([backstop, "deployments", "init", str(folder)],
                             env=installed.env, capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2
    assert f"{folder / 'automations.yaml'} already exists" in refused.stderr
    assert (folder / "automations.yaml").read_text() == "mine\n"
    assert not (folder / "prefect.yaml").exists()  # nothing written before the refusal
    forced = subprocess.run([backstop, "deployments", "init", str(folder), "--force", "--json"],
                            env=installed.env, capture_output=True, text=True)  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert len(json.loads(forced.stdout)["files"]) == 3
    assert (folder / ".env.example").read_text() == (ROOT / "deployments/env.example").read_text()
    assert (folder / "prefect.yaml").stat().st_mode & 0o077 == 0


def test_a_flow_timeout_is_read_from_the_environment(installed: Installed):
    probe = """
import os
from backstop.flows.verify import verify
from backstop.flows.timeouts import flow_timeout
print(verify.timeout_seconds)
os.environ["BACKSTOP_VERIFY_TIMEOUT_S"] = "soon"
try:
    flow_timeout("verify")
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    env = installed.env | {"BACKSTOP_VERIFY_TIMEOUT_S": "42"}
    shown = _run([str(installed.python), "-c", probe], env, installed.work).stdout.splitlines()
    assert shown[0] == "42.0"
    assert shown[1].startswith("BadInputError BACKSTOP_VERIFY_TIMEOUT_S='soon'"), shown
