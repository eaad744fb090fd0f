"""How the token service's HTTP server treats slow and malformed connections.

Guarantees of :func:`handler_args` (aiohttp ``Application(handler_args=...)``, so every runner of
the application gets them, the CLI's and the tests'):

- A connection must deliver a complete request head within ``header_timeout`` seconds of being
  opened, or of the end of its previous response, or it is closed: a client trickling header
  bytes (slowloris) or idling on a kept-alive connection holds it for no longer than that.
  (aiohttp's keep-alive timer runs while the server waits for a request head and stops while a
  handler runs, so long-polls are unaffected; bodies have their own deadline in ``bodies``.)
- Bodies are not decompressed by the HTTP parser (``auto_decompress=False``): ``bodies.decoded``
  does it with a bound, so an unknown or corrupt content coding is an RFC 6749 error from the
  handler rather than a parser failure.
- A request aiohttp cannot parse as HTTP at all (malformed request line, oversized or invalid
  header, broken chunked framing) still gets aiohttp's own 4xx; it is logged as one warning line
  without a traceback, since it is the client's error. Failures of the server itself keep their
  traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import http_exceptions


def _client_error(exc_info: Any) -> http_exceptions.HttpProcessingError | None:
    if isinstance(exc_info, http_exceptions.HttpProcessingError) and exc_info.code < 500:
        return exc_info
    return None


class _ClientErrorsWithoutTraceback(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, minus tracebacks for requests that are the client's fault."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        client = _client_error(exc_info)
        if client is not None:
            text = str(msg) % args if args else str(msg)
            self.warning("%s: HTTP %d %s", text, client.code, client.message)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        client = _client_error(kwargs.get("exc_info"))
        if client is not None:
            kwargs["exc_info"] = None
            super().debug(
                "%s: HTTP %d %s",
                str(msg) % args if args else str(msg),
                client.code,
                client.message,
                **kwargs,
            )
            return
        super().debug(msg, *args, **kwargs)


def handler_args(*, header_timeout: float) -> Mapping[str, Any]:
    """The ``handler_args`` of the token service's ``web.Application``."""
    return {
        "keepalive_timeout": header_timeout,
        "auto_decompress": False,
        "logger": _ClientErrorsWithoutTraceback(logging.getLogger("aiohttp.server"), {}),
    }
