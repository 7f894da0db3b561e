"""Is the port vLLM will listen on free? Asked before anything slow, so that a port already in
use costs a second, not a vLLM start (minutes for a big model)."""

from __future__ import annotations

import errno
import socket

from kaito_runtime.errors import InputError


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int) -> None:
    """Raise InputError (exit 2) when nothing can bind ``host:port``.

    Binds with SO_REUSEADDR, as vLLM's server does, so a socket of a server that just stopped
    (TIME_WAIT) does not count as in use; the socket is closed at once. An address this machine
    does not have is left to vLLM to report (it names the cause itself).
    """
    bind_host = "" if host in ("", "0.0.0.0") else ("::" if host == "::" else host)
    try:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
    except OSError:
        return  # no such address family here: vLLM will say so
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise InputError(
                f"Port {port} on {host} is already in use",
                why="Another process is listening there (another server, or an earlier kaito-run still running?)",
                fix="stop that process, or pick another port with --port (KAITO_PORT)",
            ) from e
        if e.errno == errno.EACCES:
            raise InputError(
                f"Port {port} on {host} cannot be used by this user",
                why="Ports below 1024 need root or CAP_NET_BIND_SERVICE",
                fix="pick a port of 1024 or above with --port (KAITO_PORT)",
            ) from e
        # EADDRNOTAVAIL and the like: an address problem vLLM reports in its own words.
    finally:
        sock.close()
