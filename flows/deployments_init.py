"""`backstop deployments init DIR`: the deployment templates, copied out of the installed
package for an operator to edit (a wheel user has them only inside site-packages).

Writes prefect.yaml (the deployments), automations.yaml (the alerting automations) and
.env.example (every BACKSTOP_* setting with its default). Imports no Prefect: it runs
in a second, anywhere backstop is installed.
"""

from __future__ import annotations

import os
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from backstop.drivers.errors import BadInputError

# Written name -> the template's name inside the package (backstop/deployments/): a
# dot-file is not package data by the usual globs, so .env.example ships undotted.
TEMPLATES: dict[str, str] = {
    "prefect.yaml": "prefect.yaml",
    "automations.yaml": "automations.yaml",
    ".env.example": "env.example",
}


def template_text(name: str) -> str:
    """A template as the installed package holds it (read as package data, so a zipped
    or otherwise non-file install works too). Read through the top package: flows do
    not import the deployments layer."""
    return resources.files("backstop").joinpath("deployments", TEMPLATES[name]).read_text()


def check_init_target(folder: str, force: bool) -> None:
    """Refuse, before anything is written: no folder named, a folder that is a file or a
    dangling link, a template that is a link or a folder (--force replaces files, never
    what a link points at), or a template already there (the operator's edits) unless
    --force."""
    if not folder.strip():
        raise BadInputError("DIR is empty: name the folder to write the templates in")
    path = Path(folder)
    if path.is_symlink() and not path.exists():
        raise BadInputError(f"{folder} is a symbolic link to nothing")
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{folder} exists and is not a folder")
    for name in TEMPLATES:
        target = path / name
        if target.is_symlink() or target.is_dir():
            kind = "symbolic link" if target.is_symlink() else "folder"
            raise BadInputError(f"{target} is a {kind}; remove it first")
        if not force and target.exists():
            raise BadInputError(f"{target} already exists (--force overwrites it)")


def write_templates(folder: str, force: bool) -> dict[str, Any]:
    """Write the templates into folder (made 0700 if new; files 0600: the operator's
    .env will hold secrets). Returns what was written."""
    check_init_target(folder, force)
    path = Path(folder)
    written = []
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in TEMPLATES:
            target = path / name
            text = template_text(name)
            # O_NOFOLLOW: a link made since the check is refused, not written through.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            descriptor = os.open(target, flags | (0 if force else os.O_EXCL), 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(text)
            written.append(str(target))
    except OSError as exc:  # unwritable, not a folder on the way, a link, a full disk
        done = f" (written before it: {', '.join(written)})" if written else ""
        raise BadInputError(
            f"cannot write the templates in {folder}: {exc.strerror or exc}"
            + (f": {exc.filename}" if exc.filename else "")
            + done
        ) from None
    return {"status": "written", "dir": str(path.resolve()), "files": written}


def next_steps(folder: str) -> str:
    return "\n".join(
        [
            f"wrote {', '.join(TEMPLATES)} in {folder}",
            "next: edit prefect.yaml (store, sources, targets, work pool) and .env.example",
            f"  cd {shlex.quote(folder)}",
            "  prefect work-pool create backstop --type process",
            "  prefect --no-prompt deploy --all",
            "  prefect worker start --pool backstop --type process",
        ]
    )
