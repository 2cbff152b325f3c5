"""Technology name -> driver class, the way fsspec's registry maps protocols.

Built-in drivers are named here with their import path and loaded lazily (so using
the Schemaless driver never imports kazoo); third-party packages add technologies
through the `backstop.drivers` entry-point group:

    [project.entry-points."backstop.drivers"]
    mytech = "mypackage.driver:MyTechDriver"
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points

from backstop.drivers.contract import Driver
from backstop.drivers.errors import BadInputError, UnknownTechnologyError

ENTRY_POINT_GROUP = "backstop.drivers"

known_implementations: dict[str, str] = {
    "schemaless": "backstop.drivers.schemaless:SchemalessDriver",
    "zookeeper": "backstop.drivers.zookeeper:ZooKeeperDriver",
    "docstore": "backstop.drivers.docstore:DocstoreDriver",
}

_registry: dict[str, type[Driver]] = {}
_lock = threading.Lock()


def register_driver(name: str, cls: type[Driver] | str, *, clobber: bool = False) -> None:
    """Add a technology. `cls` is a Driver subclass or a "module:Class" path."""
    if not clobber and (name in _registry or name in known_implementations):
        raise ValueError(f"technology {name!r} is already registered")
    if isinstance(cls, str):
        known_implementations[name] = cls
        _registry.pop(name, None)
    else:
        _registry[name] = cls


def _entry_point_paths() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_technologies() -> list[str]:
    return sorted(set(known_implementations) | set(_registry) | set(_entry_point_paths()))


def _import_path(path: str) -> type[Driver]:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise TypeError(f"{path} is not a backstop Driver subclass")
    return obj


def get_driver_class(name: str) -> type[Driver]:
    with _lock:
        if name in _registry:
            return _registry[name]
        path = known_implementations.get(name) or _entry_point_paths().get(name)
        if path is None:
            raise UnknownTechnologyError(name, available_technologies())
        try:
            cls = _import_path(path)
        except (ImportError, AttributeError, TypeError) as exc:
            raise BadInputError(
                f"technology {name!r} could not be loaded from {path}: {exc}"
            ) from exc
        _registry[name] = cls
        return cls


def get_driver(name: str) -> Driver:
    return get_driver_class(name)()
