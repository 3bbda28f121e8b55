"""The listening socket of ``potstill serve`` and ``potstill review``, bound before anything is
announced: a port already taken or an address this machine does not have is one line (exit 2),
where uvicorn would print its own error after the URL had been shown and exit 3 (which
``potstill watch`` uses for drift)."""

from __future__ import annotations

import socket
from typing import Any

from potstill.errors import PotstillError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one, read back with ``getsockname``)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise PotstillError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses its port
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise PotstillError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def url_port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def run(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` with uvicorn on ``sock`` until Ctrl+C."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])
