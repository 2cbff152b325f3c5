"""Blocks against the session's real Prefect server: `prefect block register -m
backstop.tasks.blocks`, blocks saved with their secrets through the Python API, then a
backup and a restore through the `backstop` command naming only `block:NAME`s (a
PostgreSQL source, an S3 store whose credentials exist only in its block). The data
comes back equal, and no secret is in the stored flow-run parameters, logs, artifacts,
events, the store or the command's output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import subprocess_env
from servers.sql import PASSWORD
from test_schemaless_sql import cells_of, fill

from backstop.drivers.redact import redact_url
from backstop.tasks.blocks import BackstopConnection, BackstopStore

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _without_password(url: str) -> str:
    return url.replace(f":{PASSWORD}@", "@")


def _env_without_cloud_credentials(api_url: str) -> dict[str, str]:
    """The command's environment: Prefect's API, and no AWS credentials anywhere."""
    env = {k: v for k, v in subprocess_env(api_url).items() if not k.startswith("AWS_")}
    return env | {
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _backstop(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "backstop"), *argv, "--json"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def _everything_stored(api: str, marker: str) -> str:
    """The flow runs whose parameters name `marker`, with their logs and artifacts, and
    the server's events: as JSON text."""
    with httpx.Client(base_url=api, timeout=30) as client:
        # The newest first: in a long session the first page of all runs need not hold
        # this test's (found by CI under load).
        runs = client.post(
            "/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}
        ).json()
        mine = [r for r in runs if marker in json.dumps(r["parameters"])]
        ids = [r["id"] for r in mine]
        assert ids, f"no flow run names {marker}"
        logs = client.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": ids}}, "limit": 200}
        ).json()
        artifacts = client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": ids}}}
        ).json()
        related = {"id": [f"prefect.flow-run.{i}" for i in ids]}
        events = client.post(
            "/events/filter", json={"filter": {"related": related}, "limit": 50}
        ).json()
    assert logs and artifacts and events["events"], "logs, artifacts and events to look at"
    return json.dumps([mine, logs, artifacts, events])


def test_a_backup_and_restore_through_blocks_keep_every_secret_in_the_blocks(
    prefect_harness, new_databases, moto_endpoint
):
    import s3fs

    env = _env_without_cloud_credentials(prefect_harness)
    registered = subprocess.run(
        [str(BIN / "prefect"), "block", "register", "-m", "backstop.tasks.blocks"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stdout + registered.stderr
    with httpx.Client(base_url=prefect_harness) as client:
        for slug in ("backstop-connection", "backstop-store"):
            assert client.get(f"/block_types/slug/{slug}").status_code == 200, slug

    sources, targets = new_databases("postgresql", 2), new_databases("postgresql", 2)
    for i, url in enumerate(sources):
        fill(url, 300, seed=i)
    run = uuid.uuid4().hex[:8]
    key, secret = f"AKIA{run.upper()}KEY", f"store-secret-{uuid.uuid4().hex}"
    bucket = f"backstop-blocks-{run}"
    s3fs.S3FileSystem(endpoint_url=moto_endpoint, skip_instance_cache=True).mkdir(bucket)
    BackstopStore(
        url=f"s3://{bucket}/backups",
        options={"endpoint_url": moto_endpoint},
        key=key,
        secret=secret,
    ).save(f"store-{run}")
    for role, urls in (("src", sources), ("dst", targets)):
        for i, url in enumerate(urls):
            BackstopConnection(url=_without_password(url), password=PASSWORD).save(
                f"{role}-{i}-{run}"
            )

    # Without the block, this process has no credentials for the store.
    bare = _backstop(
        env, "list", "--store", f"s3://{bucket}/backups",
        "--store-option", f"endpoint_url={moto_endpoint}",
    )  # fmt: skip
    assert bare.returncode == 2 and "no credentials" in json.loads(bare.stdout)["error"]

    store = f"block:store-{run}"
    backed_up = _backstop(
        env, "backup", "schemaless", "--source", f"block:src-0-{run}",
        "--source", f"block:src-1-{run}", "--store", store,
    )  # fmt: skip
    assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
    backup_id = json.loads(backed_up.stdout)["backup_id"]
    restored = _backstop(
        env, "restore", "schemaless", "--store", store, "--backup", backup_id,
        "--target", f"block:dst-0-{run}", "--target", f"block:dst-1-{run}",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    for source, target in zip(sources, targets, strict=True):
        assert cells_of(target) == cells_of(source)
    listed = _backstop(env, "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    assert [b["backup_id"] for b in json.loads(listed.stdout)["backups"]] == [backup_id]

    missing = _backstop(
        env, "backup", "schemaless", "--source", f"block:no-such-{run}", "--store", store
    )
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert f"no-such-{run}" in json.loads(missing.stdout)["error"]

    secrets = [PASSWORD, key, secret]
    outputs = [p.stdout + p.stderr for p in (backed_up, restored, listed, missing)]
    stored = _everything_stored(prefect_harness, f"block:src-0-{run}")
    assert f"block:store-{run}" in stored  # the parameters name the blocks
    shown = ",".join(redact_url(url) for url in sources)  # events name the block's URL
    assert f'"backstop.source.schemaless.{shown}"' in stored
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint, key=key, secret=secret)
    objects = fs.find(bucket)
    manifest = json.loads(fs.cat(f"{bucket}/backups/schemaless/{backup_id}/manifest.json"))
    assert manifest["sources"] == [redact_url(url) for url in sources]  # the block's URL
    for found in [*outputs, stored, *(fs.cat(path) for path in objects)]:
        text = found.decode("latin-1") if isinstance(found, bytes) else found
        for value in secrets:
            assert value not in text


@pytest.mark.parametrize(
    "argv",
    [
        ["backup", "schemaless", "--source", "block:Orders_1", "--store", "STORE"],
        ["backup", "schemaless", "--source", "sqlite:///x.db", "--store", "block:"],
        ["restore", "schemaless", "--store", "STORE", "--target", "block:a b"],
    ],
    ids=["source", "store", "target"],
)
def test_a_block_name_prefect_could_not_have_given_is_bad_input(cli, tmp_path, argv):
    argv = [str(tmp_path) if a == "STORE" else a for a in argv]
    result = cli(*argv, "--json")
    assert result.code == 2
    assert "block:NAME" in result.json["error"], result.json


@pytest.mark.parametrize(
    "make",
    [
        lambda: BackstopStore(url="block:backups"),
        lambda: BackstopConnection(url="block:orders-1"),
    ],
    ids=["store", "connection"],
)
def test_a_block_whose_url_names_a_block_is_refused(make):
    # A store block naming block:X had X loaded as a connection block (its password in
    # the store's URL); a connection block naming one was handed to the driver as a URL.
    with pytest.raises(ValueError, match="names a block"):
        make()
