"""The driver registry: built-ins, the entry-point group, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backstop.drivers import registry
from backstop.drivers.contract import Driver
from backstop.drivers.errors import BadInputError, UnknownTechnologyError
from backstop.drivers.schemaless import SchemalessDriver


def test_builtin_schemaless_is_registered_with_capabilities():
    driver = registry.get_driver("schemaless")
    assert isinstance(driver, SchemalessDriver)
    described = driver.describe()
    assert described["name"] == "schemaless"
    assert "snapshot" in described["consistency"]
    assert "schemaless" in registry.available_technologies()


def test_unknown_technology_names_the_known_ones():
    with pytest.raises(UnknownTechnologyError) as info:
        registry.get_driver("cassandra")
    assert info.value.exit_code == 2
    assert "'cassandra'" in str(info.value)
    assert "schemaless" in str(info.value)


@pytest.fixture
def toy_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed-looking distribution that declares a driver in backstop.drivers."""
    package = tmp_path / "toytech_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        from backstop.drivers.contract import Capabilities, ConsistencyKind
        from backstop.drivers.schemaless import SchemalessDriver

        class ToyDriver(SchemalessDriver):
            name = "toytech"
            version = "0.0.1"
            capabilities = Capabilities(consistency=(ConsistencyKind.NONE,))
        """)
    )
    dist = tmp_path / "toytech-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toytech\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(
        "[backstop.drivers]\ntoytech = toytech_pkg:ToyDriver\nbroken = toytech_pkg:Missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toytech"
    registry._registry.pop("toytech", None)
    sys.modules.pop("toytech_pkg", None)


def test_entry_point_driver_is_discovered(toy_distribution: str):
    assert toy_distribution in registry.available_technologies()
    driver = registry.get_driver(toy_distribution)
    assert type(driver).__name__ == "ToyDriver"
    assert driver.describe()["consistency"] == ["none"]


def test_entry_point_that_cannot_load_is_a_clear_error(toy_distribution: str):
    with pytest.raises(BadInputError, match="'broken' could not be loaded"):
        registry.get_driver("broken")


def test_register_driver_refuses_to_clobber():
    with pytest.raises(ValueError):
        registry.register_driver("schemaless", SchemalessDriver)

    class Extra(SchemalessDriver):
        name = "extra"

    registry.register_driver("extra", Extra)
    try:
        assert isinstance(registry.get_driver("extra"), Extra)
    finally:
        registry._registry.pop("extra")


def test_drivers_import_no_prefect():
    code = (
        "import sys, backstop.drivers, backstop.drivers.schemaless;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect');"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_builtin_is_a_driver_subclass():
    for name in registry.known_implementations:
        assert issubclass(registry.get_driver_class(name), Driver)
