"""Usage errors first (issue 12, item 1), as a user meets them at the console script.

- Every check that needs no server happens before Prefect is imported: the command
  runs with PREFECT_API_URL pointing at a closed port and a fresh PREFECT_HOME, and
  still exits 2 with one line naming the problem (any flow would fail to reach the API
  and exit 1; importing Prefect creates PREFECT_HOME).
- With --json, one JSON object on stdout, argparse's own errors included.
- An expected failure inside a flow prints the project's message once, never
  Prefect's ERROR lines and tracebacks, unless -v.
- restore, export and verify find a backup by its id alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliResult, subprocess_env

from backstop.flows.demo import compare_shards

pytestmark = pytest.mark.integration

BACKSTOP = str(Path(sys.executable).parent / "backstop")
UNREACHABLE_API = "http://127.0.0.1:9/api"
PREFECT_NOISE = ("Traceback", "Encountered exception", "Finished in state")
NOT_AN_ID = "is not a backup id"


def run(argv: list[str], env: dict[str, str], timeout: float = 600) -> CliResult:
    proc = subprocess.run(
        [BACKSTOP, *argv], capture_output=True, text=True, timeout=timeout, env=env
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def quiet_env(base: dict[str, str]) -> dict[str, str]:
    """The environment of a user's shell: no logging settings left by this test session."""
    env = dict(base)
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", None)
    return env


@pytest.fixture
def no_prefect(tmp_path: Path):
    """Run the CLI where Prefect cannot work: its API on a closed port, its home unmade.
    Returns the runner and the home path (which must still not exist afterwards)."""
    home = tmp_path / "prefect-home"
    env = quiet_env(os.environ)
    env |= {"PREFECT_API_URL": UNREACHABLE_API, "PREFECT_HOME": str(home)}
    return (lambda *argv: run(list(argv), env, timeout=120)), home


def _store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


# (argv after `backstop`, with {store} and {db} filled in; a fragment of the message)
BAD_INPUT = [
    pytest.param(
        ["backup", "schemaless", "--resume", "../20261126T120501Z-3fa2"],
        NOT_AN_ID,
        id="resume-dotdot",
    ),
    pytest.param(
        ["backup", "zookeeper", "--resume", "20261126T120501Z-3fa2"],
        "cannot be resumed",
        id="resume-not-resumable",
    ),
    pytest.param(["restore", "schemaless", "--backup", "../x"], NOT_AN_ID, id="backup-dotdot"),
    pytest.param(["restore", "schemaless", "--backup", "a/b"], NOT_AN_ID, id="backup-slash"),
    pytest.param(["restore", "schemaless", "--backup", ""], NOT_AN_ID, id="backup-empty"),
    pytest.param(  # `$` also matches before a final newline
        ["restore", "schemaless", "--backup", "20261126T120501Z-3fa2\n"],
        NOT_AN_ID,
        id="backup-newline",
    ),
    pytest.param(
        ["export", "schemaless", "--backup", "x", "--dir", "{db}.d"], NOT_AN_ID, id="export-id"
    ),
    pytest.param(
        ["verify", "--technology", "schemaless", "--backup", "../x"], NOT_AN_ID, id="verify-id"
    ),
    pytest.param(["restore", "schemaless", "--rename", "a"], "--rename takes FROM=TO", id="rename"),
    pytest.param(
        ["restore", "schemaless", "--until", "yesterday"], "--until 'yesterday'", id="until"
    ),
    pytest.param(
        ["restore", "schemaless", "--until", "shard-0=5"], "--until 'shard-0=5'", id="until-shard"
    ),
    pytest.param(
        ["restore", "schemaless", "--include", "x"],
        "does not support --include",
        id="include-unsupported",
    ),
    pytest.param(
        ["restore", "zookeeper", "--include", "app"], "subtree pattern 'app'", id="zk-include"
    ),
    pytest.param(
        ["restore", "zookeeper", "--until", "5"], "does not support --until", id="zk-until"
    ),
    pytest.param(
        ["restore", "docstore", "--rename", "shop=a.b"], "rename shop=a.b", id="docstore-rename"
    ),
    pytest.param(
        ["backup", "docstore", "--include", "a b"], "namespace pattern 'a b'", id="docstore-include"
    ),
    pytest.param(
        ["backup", "zookeeper", "--option", "mode=bogus"],
        "unknown zookeeper mode 'bogus'",
        id="zk-mode",
    ),
    pytest.param(
        ["backup", "zookeeper", "--incremental"], "does not support incremental", id="incremental"
    ),
    pytest.param(
        [
            "restore",
            "schemaless",
            "--source",
            "sqlite:///a.db",
            "--backup",
            "20261126T120501Z-3fa2",
        ],
        "not both",
        id="source-and-id",
    ),
    pytest.param(["restore"], "--backup latest needs the technology", id="restore-latest-no-tech"),
    pytest.param(
        ["export", "--dir", "{db}.d"],
        "--backup latest needs the technology",
        id="export-latest-no-tech",
    ),
    pytest.param(
        ["verify", "--backup", "latest"],
        "--backup latest needs the technology",
        id="verify-latest-no-tech",
    ),
    pytest.param(
        ["restore", "--backup", "20200101T000000Z-abcd"],
        "no complete backup 20200101T000000Z-abcd",
        id="restore-unknown-id",
    ),
    pytest.param(["prune", "--keep-last", "0"], "--keep-last must be at least 1", id="keep-last-0"),
    pytest.param(
        ["prune", "--keep-last", "-3"], "--keep-last must be at least 1", id="keep-last-neg"
    ),
    pytest.param(
        ["status", "--stale-hours", "nan"], "--stale-hours must be more than 0", id="stale-nan"
    ),
    pytest.param(
        ["demo", "--cells", "0"], "--cells and --shards must be at least 1", id="demo-cells"
    ),
    pytest.param(
        ["metrics", "--store", "{db}.store", "--listen", "9464"],
        "expected HOST:PORT",
        id="metrics-listen",
    ),
    pytest.param(
        ["metrics", "--store", "{db}.store", "--output", "{db}.missing/backstop.prom"],
        "does not exist",
        id="metrics-output-folder",
    ),
    pytest.param(
        ["metrics", "--store", "{db}.no-such-store"], "no such folder", id="metrics-store-missing"
    ),
    pytest.param(
        ["backup", "schemaless", "--recipient", "age1notakey"],
        "is not an age X25519 public key",
        id="recipient",
    ),
    pytest.param(
        ["backup", "schemaless", "--recipients-file", "{db}.none"],
        "cannot be read",
        id="recipients-file",
    ),
    pytest.param(
        ["restore", "schemaless", "--identity", "AGE-SECRET-KEY-1QQQQ"],
        "never as its text",
        id="identity-text",
    ),
    pytest.param(
        ["verify", "--identity", "{db}.no-such-key"], "cannot be read", id="identity-file"
    ),
    pytest.param(  # it backs up, then would refuse to read its own backup back
        [
            "drill",
            "schemaless",
            "--source",
            "sqlite:///{db}",
            "--scratch",
            "sqlite:///{db}.s",
            "--verify-key",
            "ed25519:" + "A" * 43 + "=",
        ],
        "give the matching --signing-key",
        id="drill-verify-without-signing",
    ),
    *[  # a key's text pasted where its file's path belongs is not echoed back
        pytest.param(
            [*argv, "MC4CAQAwBQYDK2VwBCIEIHJ5mTAbcdefghijklmnopqrstuvwx"],
            "looks like key text, not shown",
            id=f"key-text-as-path-{argv[-1]}",
        )
        for argv in (
            ["backup", "schemaless", "--signing-key"],
            ["verify", "--identity"],
            ["verify", "--verify-key"],
        )
    ],
    *[  # bandwidth limits: a number of MB/s more than 0
        pytest.param(
            [command, *tech, flag, value, *rest],
            f"{flag} takes a rate in MB/s",
            id=f"{command}{flag}={value}",
        )
        for command, tech, flag, rest in [
            ("backup", ["schemaless"], "--limit-upload", []),
            ("restore", ["schemaless"], "--limit-download", []),
            ("restore", ["schemaless"], "--limit-upload", []),
            ("verify", [], "--limit-download", []),
            ("export", ["schemaless"], "--limit-download", ["--dir", "{db}.d"]),
        ]
        for value in ("0", "-1", "abc", "nan", "inf", "1e-9", "1e308")
        if command == "backup" or value in ("0", "nan")
    ],
]


def _fill(argv: list[str], tmp_path: Path) -> list[str]:
    """Complete a command with the store and the URLs it needs, so that only the
    argument under test is wrong."""
    db = str(tmp_path / "data.db")
    argv = [a.replace("{db}", db) for a in argv]
    command, rest = argv[0], argv[1:]
    tech = rest[0] if rest and not rest[0].startswith("-") else None
    urls = {
        "schemaless": f"sqlite:///{db}",
        "zookeeper": "zk://127.0.0.1:9",
        "docstore": "mongodb://127.0.0.1:9/",
        None: f"sqlite:///{db}",
    }[tech]
    if command in ("restore", "export", "verify", "prune", "status", "list", "drill"):
        rest += ["--store", _store(tmp_path)]
    if command == "restore":
        rest += ["--target", urls]
    if command == "backup":
        rest += ["--source", urls, "--store", _store(tmp_path)]
    return [command, *rest]


@pytest.mark.parametrize(("argv", "fragment"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line_before_prefect(no_prefect, tmp_path, argv, fragment):
    cli, home = no_prefect
    result = cli(*_fill(argv, tmp_path))
    assert result.code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0] and lines[0].startswith(f"backstop {argv[0]}: ")
    assert not any(noise in result.stderr for noise in PREFECT_NOISE)
    assert "MC4CAQAw" not in result.stderr  # a pasted key (above) is never echoed
    assert result.stdout == ""
    assert not home.exists(), "Prefect was imported for a usage error"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["restore", "schemaless", "--until", "yesterday"], "--until", id="until"),
        pytest.param(["restore", "schemaless", "--frobnicate"], "unrecognized", id="unknown-flag"),
        pytest.param(["backup", "schemaless"], "required: --source", id="missing-required"),
        pytest.param(["verify", "--backup", "a/b"], NOT_AN_ID, id="backup-shape"),
    ],
)
def test_json_usage_error_is_one_json_object(no_prefect, tmp_path, argv, fragment):
    cli, home = no_prefect
    filled = _fill(argv, tmp_path) if argv[0] != "backup" else [*argv, "--store", "x"]
    result = cli(*filled, "--json")
    assert result.code == 2, result.stderr
    out = result.json  # exactly one non-empty line on stdout, and JSON
    assert out["status"] == "failed" and out["exit_code"] == 2
    assert fragment in out["error"]
    assert result.stdout.count("\n") == 1
    assert not home.exists()


# -- with a Prefect server: one real backup, then failures inside the flows ------------
@pytest.fixture(scope="module")
def backed_up(prefect_harness: str, datastore_template, tmp_path_factory) -> tuple[Path, str]:
    """A store holding one schemaless backup of the 6,000-cell template (read only: tests
    that change it work on a copy)."""
    folder = tmp_path_factory.mktemp("usage-store")
    shards = []
    for path in datastore_template:
        shutil.copyfile(path, folder / path.name)
        shards.append(f"sqlite:///{folder / path.name}")
    store = folder / "store"
    argv = ["backup", "schemaless", "--store", str(store), "--json"]
    argv += [a for url in shards for a in ("--source", url)]
    result = run(argv, server_env(prefect_harness))
    assert result.code == 0, result.stderr
    return store, result.json["backup_id"]


def server_env(api_url: str) -> dict[str, str]:
    return quiet_env(subprocess_env(api_url))


def copy_store(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


def assert_said_once(result: CliResult, message: str) -> None:
    assert result.stderr.count(message) == 1, result.stderr
    for noise in PREFECT_NOISE:
        assert noise not in result.stderr, result.stderr


def test_verify_failure_says_it_once_without_prefects_traceback(
    prefect_harness, backed_up, tmp_path
):
    store = copy_store(backed_up[0], tmp_path)
    data = sorted(store.rglob("*.zst"))[0]
    data.write_bytes(data.read_bytes()[:-7] + b"garbage")
    env = server_env(prefect_harness)

    result = run(["verify", "--store", str(store)], env)
    assert result.code == 1
    assert result.stderr.startswith("verification failed:")
    assert_said_once(result, "verification failed")
    assert data.name in result.stderr

    verbose = run(["-v", "verify", "--store", str(store)], env)
    assert verbose.code == 1 and "Traceback" in verbose.stderr


def test_restore_of_a_damaged_backup_says_it_once_without_prefects_traceback(
    prefect_harness, backed_up, tmp_path
):
    store = copy_store(backed_up[0], tmp_path)
    data = sorted(store.rglob("*.zst"))[0]
    data.write_bytes(data.read_bytes()[:-7] + b"garbage")
    argv = ["restore", "schemaless", "--store", str(store)]
    argv += [a for i in (0, 1) for a in ("--target", f"sqlite:///{tmp_path / f'r{i}.db'}")]
    env = server_env(prefect_harness)

    result = run(argv, env)
    assert result.code == 1, result.stderr
    assert_said_once(result, "failed verification; nothing was restored")
    assert not list(tmp_path.glob("r*.db"))

    verbose = run(["-v", *argv], env)
    assert verbose.code == 1 and "Traceback" in verbose.stderr


def test_restore_of_a_missing_backup_is_refused_before_prefect(no_prefect, backed_up, tmp_path):
    """The store says the backup is not there: no Prefect needed to say so."""
    run_cli, home = no_prefect
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    result = run_cli("restore", "schemaless", "--store", str(backed_up[0]), "--target", target,
                     "--backup", "20200101T000000Z-abcd")  # fmt: skip
    assert result.code == 2, result.stderr
    assert_said_once(result, "no complete backup schemaless/20200101T000000Z-abcd")
    assert not (tmp_path / "restored.db").exists()
    assert not home.exists()


def test_backup_of_an_unreachable_server_says_it_once_without_prefects_traceback(
    prefect_harness, tmp_path
):
    argv = ["backup", "schemaless", "--store", str(tmp_path / "store")]
    argv += ["--source", "postgresql+psycopg://u@127.0.0.1:9/db"]
    result = run(argv, server_env(prefect_harness))
    assert result.code == 1, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("backstop backup: ") and "unexpected error" not in first
    assert_said_once(result, first)


def test_restore_export_verify_by_id_without_the_technology(
    prefect_harness, backed_up, datastore_template, tmp_path
):
    store, backup_id = backed_up
    env = server_env(prefect_harness)
    targets = [f"sqlite:///{tmp_path / f'shard{i}.db'}" for i in range(2)]
    argv = ["restore", "--store", str(store), "--backup", backup_id, "--json"]
    restored = run(argv + [a for url in targets for a in ("--target", url)], env)
    assert restored.code == 0, restored.stderr
    assert restored.json["backup_id"] == backup_id
    assert restored.json["technology"] == "schemaless"
    sources = [f"sqlite:///{path}" for path in datastore_template]
    comparison = compare_shards(sources, targets)
    assert comparison.equal and comparison.cells == 6000

    exported = run(
        ["export", "--store", str(store), "--backup", backup_id, "--dir", str(tmp_path / "x")],
        env,
    )
    assert exported.code == 0, exported.stderr
    assert f"schemaless/{backup_id}" in exported.stdout
    assert any((tmp_path / "x").rglob("*"))

    verified = run(["verify", "--store", str(store), "--backup", backup_id, "--json"], env)
    assert verified.code == 0, verified.stderr
    assert verified.json["ok"] and verified.json["backups"] == [f"schemaless/{backup_id}"]


def test_an_id_under_two_technologies_is_refused_naming_both(no_prefect, backed_up, tmp_path):
    store, backup_id = backed_up
    store = copy_store(store, tmp_path)
    shutil.copytree(store / "schemaless" / backup_id, store / "kvdir" / backup_id)
    cli, home = no_prefect
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    for argv in (
        ["restore", "--store", str(store), "--target", target, "--backup", backup_id],
        ["verify", "--store", str(store), "--backup", backup_id, "--json"],
    ):
        result = cli(*argv)
        assert result.code == 2
        said = result.json["error"] if "--json" in argv else result.stderr
        assert "kvdir and schemaless" in said, said
    assert not home.exists()
    assert json.loads((store / "kvdir" / backup_id / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["BACKSTOP_UNITS_PER_TASK", "BACKSTOP_IN_FLIGHT"])
@pytest.mark.parametrize("value", ["0", "-3", "four", "1.5"])
def test_a_bad_unit_knob_exits_2_before_prefect(tmp_path, name, value):
    home = tmp_path / "prefect-home"
    env = quiet_env(os.environ) | {"PREFECT_API_URL": UNREACHABLE_API, "PREFECT_HOME": str(home)}
    env[name] = value
    argv = ["backup", "schemaless", "--source", f"sqlite:///{tmp_path / 'a.db'}",
            "--store", _store(tmp_path)]  # fmt: skip
    result = run(argv, env, timeout=120)
    assert result.code == 2, result.stderr
    assert result.stderr.strip() == (
        f"backstop backup: {name} must be a whole number of at least 1, not {value!r}"
    )
    assert not home.exists(), "Prefect was imported for a usage error"
