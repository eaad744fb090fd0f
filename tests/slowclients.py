"""A slow client (slowloris) on loopback TLS, for the servers' header and body deadlines.

:func:`trickle` opens a TLS connection, sends ``head`` then ``body`` one byte every ``interval``
seconds, and returns what the server did: how long until it closed the connection, whether the
whole request was sent, and what it answered before closing.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import ssl
import time


@dataclasses.dataclass
class Outcome:
    closed_after: float | None
    """Seconds from the connection's start until the server closed it (None: never did)."""
    sent_everything: bool
    answer: bytes


def trickle(
    port: int,
    *,
    head: bytes,
    body: bytes = b"",
    prefix: bytes = b"",
    interval: float = 0.1,
    give_up: float = 30.0,
) -> Outcome:
    """Send ``prefix`` at once, then ``head + body`` a byte at a time (see the module doc)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    answer = b""
    with context.wrap_socket(raw, server_hostname="localhost") as connection:
        connection.setblocking(False)
        pending = memoryview(prefix + head + body)
        position = 0
        while time.monotonic() - started < give_up:
            if position < len(pending):
                step = len(prefix) if position == 0 and prefix else 1
                try:
                    connection.send(pending[position : position + step])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
                except OSError:
                    return Outcome(time.monotonic() - started, False, answer)
                else:
                    position += step
            readable, _, _ = select.select([connection], [], [], interval)
            if readable:
                try:
                    data = connection.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    return Outcome(time.monotonic() - started, position >= len(pending), answer)
                answer += data
    return Outcome(None, position >= len(pending), answer)
