"""Local files that backstop creates: private (0600, folders 0700) whatever the umask,
and durable (fsynced) where a later step relies on them being on disk.

Backups, manifests, exports and restored SQLite files hold a database's content: they
get no more access than their owner's, even where the umask would allow more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> list[str]:
    """Create `path` and its missing parents 0700; existing folders keep their mode.
    Returns the folders created, outermost first."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            continue  # made meanwhile by another unit of the same backup
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is cut by the umask; the chmod is not
        created.append(folder)
    return created


def create_private_file(path: str | os.PathLike[str], *, exclusive: bool = False) -> int:
    """Open `path` for writing as a new 0600 file (truncating an existing one unless
    `exclusive`, which refuses it with FileExistsError); returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask, or an older file's mode, may say otherwise
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_private(path: str | os.PathLike[str], *, exclusive: bool = False) -> Iterator[IO[bytes]]:
    """A 0600 file written whole and fsynced before the block ends without error."""
    with os.fdopen(create_private_file(path, exclusive=exclusive), "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a folder's entries (files created, renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
