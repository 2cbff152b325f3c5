"""The pull step of backstop's deployments: the flow code is the installed package.

`prefect deploy` records, when a prefect.yaml names no pull step, the folder it ran in
(a `set_working_directory` step), and every later run fails once that folder is gone.
backstop's deployments name this step instead: a worker runs it before it imports the
flow from its module path (`backstop.flows.backup.backup`), so a run needs nothing but
backstop installed where the worker runs, and its log says which backstop that is.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path


def use_installed_package() -> dict[str, str]:
    """Name the backstop the flows will be imported from, in the run's log (and as the
    step's outputs). Where backstop is not installed this step is not importable
    either, and the run fails at once saying so."""
    from prefect.logging import get_logger

    import backstop

    try:
        version = metadata.version("backstop")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed as a distribution)"
    location = str(Path(backstop.__file__).resolve().parent)
    # Pull steps run before the flow's context exists: the run's id (which the engine's
    # environment carries) sends the line to the run's log through Prefect's API handler.
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    get_logger("flow_runs.backstop").info(
        "backstop %s from %s", version, location, extra={"flow_run_id": run_id} if run_id else {}
    )
    return {"backstop_version": version, "backstop_location": location}
