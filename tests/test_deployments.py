"""The deployments template: every entry loads its flow from the installed package and
validates, and `deployments/serve.py` serves them so that a run triggered through the API
completes and leaves a backup in the store. `prefect deploy` of the template from an
installed wheel, with a worker, is tests/test_wheel_deployment.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from servers.process import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def entries() -> list[dict]:
    return yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


def test_every_deployment_names_a_flow_whose_models_accept_its_parameters():
    sys.path.insert(0, str(ROOT / "deployments"))
    from serve import load_deployments

    from backstop.tasks.store import StoreSpec

    deployments = load_deployments(PREFECT_FILE)
    assert [d.name for d in deployments] == [e["name"] for e in entries()]
    for deployment, entry in zip(deployments, entries(), strict=True):
        name = entry["name"]
        # Loaded from the installed package, never from the deploying folder.
        assert ":" not in entry["entrypoint"], f"{name}: not a module path"
        assert deployment.concurrency_limit == 1, f"{name} may run twice at once"
        flow = load_flow_from_entrypoint(entry["entrypoint"])
        assert flow.timeout_seconds, f"{flow.name} has no timeout"
        request = entry["parameters"]["request"]
        if "manual" in entry["tags"]:  # filled in on the form: the store is pre-filled
            assert not deployment.schedules, f"{name} is manual but scheduled"
            StoreSpec.model_validate(request["store"])
            continue
        assert deployment.schedules, f"{name} has no schedule"
        assert flow.validate_parameters(entry["parameters"])  # the pydantic request models
        for url in request.get("sources", []) + request.get("scratch", []):
            password = urlsplit(url).password
            assert password is None or password.startswith("${"), f"a password in {url}"
    pull = yaml.safe_load(PREFECT_FILE.read_text())["pull"]
    assert pull == [{"backstop.deployments.steps.use_installed_package": {}}]


@pytest.fixture
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME and
    database, one per test: `prefect deploy` and `serve` would share deployment names."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log_path = home / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(process, port, 120, log_path)
        url = env["PREFECT_API_URL"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "Prefect server never became healthy"
            time.sleep(0.5)
        yield url, env
    finally:
        stop(process, log)


def _api(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    response = httpx.request(method, f"{url}{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response


def test_a_served_deployment_runs_when_triggered_through_the_api(prefect_server, shards, tmp_path):
    url, env = prefect_server
    serve_log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - closed by stop()
    served = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "deployments" / "serve.py"),
            "--only",
            "schemaless-nightly",
            "--prefect-file",
            str(ROOT / "deployments" / "prefect.yaml"),
        ],
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        deployment = None
        while deployment is None:
            assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve.py never registered its deployment"
            try:
                deployment = _api(
                    url, "GET", "/deployments/name/backstop-backup/schemaless-nightly"
                ).json()
            except httpx.HTTPStatusError:
                time.sleep(0.5)
        store = (tmp_path / "store").as_uri()
        request = {"technology": "schemaless", "sources": shards, "store": {"url": store}}
        flow_run = _api(
            url,
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"request": request}},
        ).json()
        deadline = time.monotonic() + 180
        while True:
            state = _api(url, "GET", f"/flow_runs/{flow_run['id']}").json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, f"run still {state['type']} after 180 s"
            time.sleep(1)
        assert state["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        backups = list((tmp_path / "store" / "schemaless").iterdir())
        assert len(backups) == 1 and (backups[0] / "manifest.json").is_file()
        # Run from a deployment: a scheduled backup, what `latest` may mean.
        assert json.loads((backups[0] / "manifest.json").read_text())["role"] == "scheduled"
    finally:
        stop(served, serve_log)


def test_the_alerting_automation_templates_are_accepted_by_a_real_server(prefect_server):
    url, env = prefect_server
    template = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())
    for automation in template["automations"]:  # no notification block in a test server
        automation["actions"] = [{"type": "do-nothing"}]
    created = subprocess.run(
        [str(BIN / "prefect"), "automation", "create", "--from-json", json.dumps(template)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    found = _api(url, "POST", "/automations/filter", json={}).json()
    assert sorted(a["name"] for a in found) == ["backstop failure", "backstop stale source"]
    stale = next(a for a in found if a["name"] == "backstop stale source")
    assert stale["trigger"]["posture"] == "Proactive" and stale["trigger"]["within"] == 93600
