"""A TCP forwarder on 127.0.0.1: one server reached by a second address, as a load
balancer, a NAT rule or another interface would make it. Identities built from
addresses cannot tell the two apart; only the server can."""

from __future__ import annotations

import contextlib
import socket
import threading


class Forwarder:
    """Accepts on 127.0.0.1:<port> and pipes every connection to `target_port`."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._open: list[socket.socket] = []  # for kill()
        self.bytes_down = 0  # server -> client: how far a reader has got
        threading.Thread(target=self._accept, daemon=True, name="forwarder").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for a, b, counted in ((client, upstream, False), (upstream, client, True)):
                args = (a, b, self._count if counted else None)
                threading.Thread(target=_pipe, args=args, daemon=True).start()

    def _count(self, n: int) -> None:
        self.bytes_down += n  # one thread per connection's direction; a rough figure

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def kill(self) -> None:
        """As a server that dies: no new connection, and every open one cut at once."""
        self.close()
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()


def _pipe(source: socket.socket, sink: socket.socket, count=None) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
            if count is not None:
                count(len(data))
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
