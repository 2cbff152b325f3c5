"""Private keys never appear anywhere (issue 14): an age identity (and the manifest
signing key) used for an encrypted, signed backup, restore, verify and drill, from a
Prefect Secret block and from a file, is found in none of what Prefect stored about the
runs (parameters, states, task runs, logs, artifacts, events, its database files), the
store, or the command's output (with -v too). And a backup killed part-way leaves no
record content in clear, neither in the store nor in its temporary folder.

Every key a command may be given is one entry of KEYS: a new one joins with one line.
Each search is shown to find a planted string first, so an empty result means something.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from conftest import PREFECT_HOME, CliResult, subprocess_env
from test_secrets import paged

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks import crypto, signing

pytestmark = pytest.mark.integration

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- the keys ---------------------------------------------------------------------------
@dataclass
class Key:
    """A private key a command is told where to find: the text of its file and of its
    Secret block, the forms of it that must appear nowhere, and the command-line
    arguments that use it, given where it is (a path or a ${secret:BLOCK} reference)."""

    name: str
    text: str
    forms: list[bytes]
    write_args: Callable[[str], list[str]]  # backup, drill
    read_args: Callable[[str], list[str]]  # restore, verify, drill


def raw_forms(raw: bytes) -> list[bytes]:
    """Raw key bytes and the ways a program might print them."""
    return [
        raw,
        raw.hex().encode(),
        raw.hex().upper().encode(),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    ]


def bech32_payload(text: str) -> bytes:
    """The bytes a bech32 string encodes (its checksum not checked: pyrage parsed it)."""
    data = [BECH32.index(c) for c in text.lower().rpartition("1")[2][:-6]]
    bits, value, out = 0, 0, bytearray()
    for group in data:
        value, bits = (value << 5) | group, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((value >> bits) & 0xFF)
    return bytes(out)


def age_identity() -> Key:
    identity, recipient = crypto.generate_identity()
    recovery = crypto.generate_identity()[1]  # the offline recovery key: public only here
    payload = identity.removeprefix(crypto.IDENTITY_PREFIX)
    assert payload != identity and len(bech32_payload(identity)) == 32
    texts = [identity, identity.lower(), payload, payload.lower()]
    return Key(
        name="age-identity",
        text=identity + "\n",
        forms=[t.encode() for t in texts] + raw_forms(bech32_payload(identity)),
        write_args=lambda _: ["--recipient", recipient, "--recipient", recovery],
        read_args=lambda where: ["--identity", where],
    )


def signing_key() -> Key:
    from cryptography.hazmat.primitives import serialization

    private_pem, _ = signing.generate()
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    body = "".join(line for line in private_pem.splitlines() if not line.startswith("-----"))
    verify_key = signing.one_line(key.public_key())
    return Key(
        name="signing-key",
        text=private_pem,
        forms=[private_pem.encode(), body.encode(), *raw_forms(seed)],
        write_args=lambda where: ["--signing-key", where],
        read_args=lambda _: ["--verify-key", verify_key],
    )


KEYS: list[Callable[[], Key]] = [age_identity, signing_key]


@dataclass
class Placed:
    key: Key
    file: str  # a 0600 file holding it
    block: str  # a ${secret:BLOCK} reference to a Secret block holding it


@pytest.fixture
def keys(tmp_path: Path) -> list[Placed]:
    from prefect.blocks.system import Secret

    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    placed = []
    for make in KEYS:
        key = make()
        path = folder / key.name
        crypto.private_key_file(path, key.text)
        block = f"backstop-test-{key.name}-{uuid.uuid4().hex[:8]}"
        Secret(value=key.text).save(block, overwrite=True)
        placed.append(Placed(key, str(path), f"${{secret:{block}}}"))
    return placed


def write_args(keys: list[Placed]) -> list[str]:
    return [arg for p in keys for arg in p.key.write_args(p.block)]


def read_args(keys: list[Placed], where: str = "block") -> list[str]:
    return [arg for p in keys for arg in p.key.read_args(getattr(p, where))]


# -- searching --------------------------------------------------------------------------
def found(forms: list[bytes], texts: dict[str, list[str | bytes]]) -> list[str]:
    """Where (channel: excerpt) any of `forms` occurs in the texts of each channel."""
    hits = []
    for channel, items in texts.items():
        for item in items:
            data = item.encode() if isinstance(item, str) else item
            for form in forms:
                at = data.find(form)
                if at >= 0:
                    excerpt = data[max(0, at - 80) : at + 80].decode(errors="replace")
                    hits.append(f"{channel}: {form[:12]!r}... in {excerpt!r}")
    return hits


def file_contents(*folders: Path) -> dict[str, list[bytes]]:
    """Every file under the folders, as stored, and decompressed where it is a zstd file
    (a compressed copy in clear would hide a string from a plain search)."""
    out: dict[str, list[bytes]] = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            out[str(path)] = [data]
            if data.startswith(ZSTD_MAGIC):
                reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
                chunks = []
                with contextlib.suppress(zstandard.ZstdError):  # cut short: what could be read
                    while chunk := reader.read(1 << 20):
                        chunks.append(chunk)
                out[str(path)].append(b"".join(chunks))
    return out


def prefect_records(since: datetime) -> dict[str, list[str]]:
    """What Prefect keeps about the flow runs created since `since`, by channel: the runs
    (parameters and all, every state), their task runs and states, logs, artifacts and the
    events of the time window."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    records: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        recent = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)
        runs = [r for r in recent if r.created and r.created >= since]
        ids = [r.id for r in runs]
        runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        records["parameters"] = [json.dumps(r.parameters) for r in runs]
        records["flow runs"] = [r.model_dump_json() for r in runs] + [
            s.model_dump_json() for r in runs for s in client.read_flow_run_states(r.id)
        ]
        task_runs = paged(
            lambda n: client.read_task_runs(flow_run_filter=runs_filter, limit=200, offset=n)
        )
        records["task runs"] = [t.model_dump_json() for t in task_runs] + [
            s.model_dump_json() for t in task_runs for s in client.read_task_run_states(t.id)
        ]
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
        logs = paged(lambda n: client.read_logs(log_filter, limit=200, offset=n))
        records["logs"] = [log.model_dump_json() for log in logs]
        records["artifacts"] = [
            a.model_dump_json() for a in client.read_artifacts(flow_run_filter=runs_filter)
        ]
        window = EventOccurredFilter(since=since, until=datetime.now(UTC))
        page = client.read_events(EventFilter(occurred=window), limit=50)  # POST /events/filter
        records["events"] = [e.model_dump_json() for e in page.events]
        while page.next_page:
            page = client.read_events_page(str(page.next_page))
            records["events"] += [e.model_dump_json() for e in page.events]
    return records


def prefect_files() -> dict[str, list[bytes]]:
    """The server's database files (the harness's) and the session's PREFECT_HOME
    (results, local storage): where Prefect keeps what it was given."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    files = {str(p): [p.read_bytes()] for p in database.parent.glob(database.name + "*")}
    assert files, f"no database file at {database}"
    return files | file_contents(Path(PREFECT_HOME))


def canary_run(canary: str) -> None:
    """A flow that puts `canary` in each channel searched: its parameters, a task run's
    name, a log line, an artifact and an event (the searches must find it, or they prove
    nothing)."""
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    @task(task_run_name="canary-{value}")
    def canary_task(value: str) -> None:
        get_run_logger().info("canary %s", value)

    @flow(name="backstop-test-canary")
    def canary_flow(value: str) -> None:
        canary_task(value)
        create_markdown_artifact(f"canary {value}", key="backstop-test-canary")
        emit_event("backstop.test.canary", resource={"prefect.resource.id": "backstop.test"},
                   payload={"value": value})  # fmt: skip

    canary_flow(canary)


def records_with_canary(since: datetime, canary: bytes) -> dict[str, list[str]]:
    """prefect_records once the canary is in every channel (events reach the server's
    store a moment after they are sent; the canary's went last)."""
    deadline = time.monotonic() + 60
    while True:
        records = prefect_records(since)
        missing = [c for c in records if not found([canary], {c: records[c]})]
        if not missing:
            return records
        if time.monotonic() > deadline:
            pytest.fail(f"a string planted in Prefect was not found in {missing}")
        time.sleep(1)


def test_the_searches_find_a_planted_key(tmp_path):
    """Each form of each key, planted in a text or among bytes in a file (also inside a
    zstd frame), is found: an empty search result below is not for want of looking."""
    for make in KEYS:
        key = make()
        assert found(key.forms, {"text": [f"x {key.text} y"]})
        for form in key.forms:
            assert found([form], {"text": [b"\x00noise" + form + b"noise"]})
            assert found(key.forms, {"text": [b"\x00noise" + form + b"noise"]})
        planted = tmp_path / key.name
        planted.mkdir()
        (planted / "a").write_bytes(os.urandom(64) + key.forms[-1] + os.urandom(64))
        (planted / "b.zst").write_bytes(zstandard.compress(key.text.encode() * 20))
        hits = found(key.forms, file_contents(planted))
        assert any("/a:" in h for h in hits) and any("/b.zst:" in h for h in hits), hits


# -- the scenario -----------------------------------------------------------------------
@pytest.fixture
def verbose_cli(prefect_harness: str) -> Callable[..., CliResult]:
    """`backstop -v ...` in a process of its own, with Prefect's console logging at its
    default (INFO) level: what a user sees with -v (this session's quiet WARNING level,
    set for the tests, left out; in this process Prefect's logging is set up already)."""

    def run(*argv: str) -> CliResult:
        env = subprocess_env(prefect_harness)
        env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "backstop"), "-v", *argv],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def test_keys_appear_nowhere_prefect_the_store_or_the_output_can_show(
    cli, verbose_cli, keys, shards, target_urls, tmp_path
):
    since = datetime.now(UTC)
    store = (tmp_path / "store").as_uri()

    def folder(name: str) -> list[str]:
        (tmp_path / name).mkdir()
        return [f"sqlite:///{tmp_path / name / f'shard{i}.db'}" for i in range(len(shards))]

    def arg_list(flag: str, urls: list[str]) -> list[str]:
        return [arg for url in urls for arg in (flag, url)]

    sources = arg_list("--source", shards)
    outputs: list[CliResult] = []

    def ok(result: CliResult) -> CliResult:
        outputs.append(result)
        assert result.code == 0, result.stdout + result.stderr
        return result

    # Keys from Secret blocks: backup, restore, verify, drill; then from files.
    backed = ok(verbose_cli("backup", "schemaless", *sources, "--store", store,
                            *write_args(keys), "--json"))  # fmt: skip
    restored = ok(cli("restore", "schemaless", *arg_list("--target", target_urls),
                      "--store", store, *read_args(keys), "--json"))  # fmt: skip
    assert restored.json["verified"] is True
    checked = ok(verbose_cli("verify", "--store", store, *read_args(keys), "--json"))
    assert checked.json["ok"] is True and checked.json["stored_bytes_only"] == 0
    drilled = ok(verbose_cli("drill", "schemaless", *sources,
                             *arg_list("--scratch", folder("scratch")), "--store", store,
                             *write_args(keys), *read_args(keys), "--json"))  # fmt: skip
    assert drilled.json["backup_id"] != backed.json["backup_id"]
    # From files, the human output.
    by_file = ok(verbose_cli("restore", "schemaless",
                             *arg_list("--target", folder("restored-by-file")), "--store", store,
                             "--backup", backed.json["backup_id"], *read_args(keys, "file")))  # fmt: skip
    assert "verified equal" in by_file.stdout

    # The keys were used: the data files are age files, the manifests signed.
    stored = file_contents(tmp_path / "store")
    assert any(c[0].startswith(b"age-encryption.org/v1\n") for c in stored.values())
    if any(p.key.name == "signing-key" for p in keys):
        assert any(path.endswith("/" + signing.SIGNATURE_NAME) for path in stored)

    canary = f"backstop-canary-{uuid.uuid4().hex}"
    canary_run(canary)
    records = records_with_canary(since, canary.encode())
    files = prefect_files()
    assert found([canary.encode()], files), "the canary is not in Prefect's files"
    output = {"output": [r.stdout + r.stderr for r in outputs]}
    assert all("| INFO" in r.stderr for r in outputs if r is not restored), "no -v output"

    forms = [form for p in keys for form in p.key.forms]
    hits = found(forms, records) + found(forms, stored) + found(forms, files)
    hits += found(forms, output)
    assert not hits, "\n".join(hits[:20])


# -- an interrupted backup ----------------------------------------------------------------
def _data_file_with_bytes(store: Path) -> Path | None:
    for path in store.rglob("*"):
        name = path.name
        if name.startswith(".lease") or name.startswith("manifest") or not path.is_file():
            continue
        if path.stat().st_size > 0:
            return path
    return None


def test_an_interrupted_encrypted_backup_leaves_no_plaintext(prefect_harness, tmp_path):
    """SIGKILL part-way through an encrypted backup (its whole process group): no cell's
    content in clear under the store or the command's temporary folder, no manifest."""
    marker = f"plain-marker-{uuid.uuid4().hex}"
    [source] = make_schemaless_datastore(tmp_path / "source", shards=1, cells=200_000)
    database = source.removeprefix("sqlite:///")
    with (
        contextlib.closing(sqlite3.connect(database)) as db,
        db,
    ):  # every cell's body names the marker
        db.execute(
            "UPDATE cells SET body = CAST(substr(body, 1, length(body) - 1) "
            "|| ',\"marker\":\"' || ? || '\"}' AS BLOB)",
            (marker,),
        )
    # The scan finds the marker where it is in clear, as stored and compressed.
    planted = tmp_path / "planted" / "cells.zst"
    planted.parent.mkdir()
    planted.write_bytes(zstandard.compress(Path(database).read_bytes()))
    hits = found([marker.encode()], file_contents(planted.parent, Path(database).parent))
    assert {h.split(": ")[0] for h in hits} == {database, str(planted)}, hits

    store, temporary = tmp_path / "store", tmp_path / "tmp"
    temporary.mkdir()
    env = subprocess_env(prefect_harness) | {"TMPDIR": str(temporary)}
    recipient = crypto.generate_identity()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "backstop"), "backup", "schemaless",
         "--source", source, "--store", store.as_uri(), "--recipient", recipient, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while (written := _data_file_with_bytes(store)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert written is not None, f"no data file was written (exit {proc.returncode}): {out + err!r}"
    assert proc.returncode == -signal.SIGKILL, f"the backup ended before the kill: {out!r}"

    assert not list(store.rglob("manifest.json"))
    after = file_contents(store, temporary)
    assert str(written) in after
    hits = found([marker.encode()], after)
    assert not hits, "\n".join(hits[:20])
    assert not found([marker.encode()], {"output": [out, err]})


def test_the_read_back_key_a_backup_hands_its_tasks_appears_nowhere(
    cli, shards, tmp_path, monkeypatch
):
    """An encrypted backup's one-time read-back identity travels to its validate tasks
    as a parameter (so Dask workers can decrypt what they read back): Prefect must keep
    it nowhere, nor may the store or the output show it."""
    since = datetime.now(UTC)
    made: list[str] = []
    real = crypto.read_back_pair

    def recorded():
        identity, recipient = real()
        made.append(identity.get_secret_value())
        return identity, recipient

    monkeypatch.setattr(crypto, "read_back_pair", recorded)
    recipient = crypto.generate_identity()[1]
    result = cli("backup", "schemaless", *[a for s in shards for a in ("--source", s)],
                 "--store", (tmp_path / "store").as_uri(), "--recipient", recipient, "--json")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    [identity] = made
    payload = identity.removeprefix(crypto.IDENTITY_PREFIX)
    forms = [t.encode() for t in (identity, identity.lower(), payload, payload.lower())]
    forms += raw_forms(bech32_payload(identity))
    canary = f"backstop-canary-{uuid.uuid4().hex}"
    canary_run(canary)
    records = records_with_canary(since, canary.encode())
    hits = found(forms, records) + found(forms, prefect_files())
    hits += found(forms, file_contents(tmp_path / "store"))
    hits += found(forms, {"output": [result.stdout + result.stderr]})
    assert not hits, "\n".join(hits[:20])
