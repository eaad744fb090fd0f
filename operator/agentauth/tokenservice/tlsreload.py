"""The token service's TLS context, following its certificate files as they are renewed.

cert-manager (or an admin) replaces the Secret mounted at ``/etc/agentauth/tls``; the kubelet
swaps the files in place. Guarantees:

- :func:`serving_context` loads the certificate chain and key once, and fails at start-up (the
  ``ssl`` error) when they do not load.
- On a TLS handshake at least ``recheck`` seconds after the last look, the files' modification
  times and sizes are compared; when they changed and the new pair loads, that handshake and every
  later one use the new certificate (through ``SSLContext.sni_callback``, the documented way to
  switch certificates per connection). A pair that does not load (half-written during the swap)
  is ignored until the next look: the previous certificate keeps being served.
- No thread, no timer: nothing runs between handshakes.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0


def _load(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def _fingerprint(cert: Path, key: Path) -> tuple[float, int, float, int]:
    # stat follows the kubelet's ..data symlink swap, so a renewal changes these.
    c, k = os.stat(cert), os.stat(key)
    return (c.st_mtime, c.st_size, k.st_mtime, k.st_size)


class _Follower:
    def __init__(self, cert: Path, key: Path, *, recheck: float) -> None:
        self.cert, self.key, self.recheck = cert, key, recheck
        self.current = _load(cert, key)
        self.seen = _fingerprint(cert, key)
        self.checked = time.monotonic()
        self.lock = threading.Lock()

    def context_for_handshake(self) -> ssl.SSLContext:
        with self.lock:
            now = time.monotonic()
            if now - self.checked < self.recheck:
                return self.current
            self.checked = now
            try:
                found = _fingerprint(self.cert, self.key)
                if found != self.seen:
                    self.current = _load(self.cert, self.key)
                    self.seen = found
                    logger.info("token service certificate reloaded from %s", self.cert)
            except (OSError, ssl.SSLError) as error:
                logger.warning("cannot reload the certificate from %s: %s", self.cert, error)
            return self.current


def serving_context(cert: Path, key: Path, *, recheck: float = RECHECK_SECONDS) -> ssl.SSLContext:
    """The server-side context for ``cert``/``key`` that picks up renewed files."""
    follower = _Follower(cert, key, recheck=recheck)
    outer = _load(cert, key)

    def switch(connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: object) -> None:
        fresh = follower.context_for_handshake()
        if fresh is not connection.context:
            connection.context = fresh

    outer.sni_callback = switch
    return outer
