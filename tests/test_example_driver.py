"""The worked example of docs/architecture.md: a third-party driver (tests/example_driver)
installed through the `backstop.drivers` entry point runs through every flow unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from backstop.drivers import registry


@pytest.fixture
def kvdir_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A dist-info folder declaring the driver, as `pip install` would leave it."""
    dist = tmp_path / "site" / "backstop_kvdir-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: backstop-kvdir\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[backstop.drivers]\nkvdir = example_driver.kvdir:KvDirDriver\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    yield "kvdir"
    registry._registry.pop("kvdir", None)
    sys.modules.pop("example_driver.kvdir", None)


def test_a_third_party_driver_backs_up_restores_and_verifies(
    kvdir_installed, cli, local_store, tmp_path
):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    values = {f"key-{i}": os.urandom(i * 37) for i in range(50)}
    for key, value in values.items():
        (source / key).write_bytes(value)

    backed_up = cli("backup", "kvdir", "--source", f"kvdir://{source}",
                    "--store", local_store.url, "--json")  # fmt: skip
    assert backed_up.code == 0, backed_up.stdout
    assert backed_up.json["records"] == 50 and backed_up.json["consistency"] == "none"
    restored = cli("restore", "kvdir", "--store", local_store.url,
                   "--target", f"kvdir://{target}", "--json")  # fmt: skip
    assert restored.code == 0 and restored.json["verified"] is True
    # The plugin's own quality suite ran on the backup and on the restored target.
    assert restored.json["quality"] == "passed"
    [manifest] = local_store.open().list_backups("kvdir")
    checks = {c["check"]: c["passed"] for c in manifest.quality.checks}
    assert checks["unique across the part: key"] is True
    assert checks["count equals the source's"] is True
    assert any(c.startswith("gx:expect_column_values_to_match_regex(column=key") for c in checks)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == values

    (target / "key-3").write_bytes(b"changed")
    (target / "stray").write_bytes(b"x")
    again = cli("restore", "kvdir", "--store", local_store.url, "--target", f"kvdir://{target}",
                "--mode", "overwrite", "--json")  # fmt: skip
    assert again.code == 0 and again.json["safety_backup"]  # the changed target, kept
    assert {p.name: p.read_bytes() for p in target.iterdir()} == values
    assert cli("verify", "--store", local_store.url, "--json").json["ok"] is True
    status = cli("status", "--store", local_store.url, "--json").json
    assert {r["technology"] for r in status["sources"]} == {"kvdir"}
