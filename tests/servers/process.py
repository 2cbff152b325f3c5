"""What every test server launcher shares: free ports and stopping what it started."""

from __future__ import annotations

import socket
import subprocess
from typing import IO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen | None, log: IO[bytes] | None) -> None:
    """Terminate (then kill) a server process and close its log."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if log:
        log.close()
