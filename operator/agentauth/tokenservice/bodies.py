"""Request bodies as the token service accepts them: every malformed one is a 4xx, never a 500.

Guarantees (every refusal raises ``errors.OAuthError``, so handlers answer RFC 6749 JSON and the
token endpoint writes its audit line):

- :func:`read` returns the body exactly as sent (the *content* RFC 9530 ``Content-Digest`` is
  computed over), read within ``timeout`` seconds: a client trickling its body gets 408
  ``invalid_request`` instead of holding a handler. The application is built with
  ``auto_decompress=False`` (see ``hardening``), so nothing is decoded on the way in.
- :func:`decoded` undoes ``Content-Encoding``: ``identity``, ``gzip``/``x-gzip`` and ``deflate``
  (zlib or raw), bounded to ``max_bytes`` of output (a compression bomb stops there, 413);
  corrupt data is 400; any other coding (``br``, ``zstd``, unknown names, several codings) is 415
  ``invalid_request``.
- Text is UTF-8 only: a ``charset`` parameter other than ``utf-8`` (``utf-16``, ``latin-1``, an
  unknown name) is 415; bytes that are not UTF-8, also inside the percent-escapes of a form, are
  400.
- :func:`form` requires ``application/x-www-form-urlencoded`` and returns every value of every
  field (at most ``MAX_FORM_FIELDS``); :func:`json_value` parses RFC 8259 JSON with
  ``strictjson`` (no ``NaN``, bounded nesting) and returns the value.

Results are memoised on the request, so a handler and the signature check share one read.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import zlib
from typing import Any

from aiohttp import web

from agentauth.domain import errors, strictjson

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 64
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_RAW_KEY = web.RequestKey("agentauth_body_raw", bytes)
_DECODED_KEY = web.RequestKey("agentauth_body_decoded", bytes)


def _unsupported(description: str) -> errors.OAuthError:
    return errors.OAuthError("invalid_request", description, 415)


def _too_large(max_bytes: int) -> errors.OAuthError:
    return errors.OAuthError("invalid_request", f"request body exceeds {max_bytes} bytes", 413)


async def read(request: web.Request, *, timeout: float, max_bytes: int) -> bytes:
    """The body as sent, read within ``timeout`` seconds (408 otherwise), at most
    ``max_bytes`` (413; the application's ``client_max_size`` is the same bound)."""
    cached: bytes | None = request.get(_RAW_KEY)
    if cached is not None:
        return cached
    try:
        if request.content.is_eof():
            # The whole body has arrived with the headers (as a token request's does): reading
            # it cannot wait, and a timer armed and cancelled per request is not free.
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout):
                raw = await request.read()
    except TimeoutError:
        raise errors.OAuthError(
            "invalid_request", f"the request body did not arrive within {timeout:g} s", 408
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    request[_RAW_KEY] = raw
    return raw


def _inflate(raw: bytes, *, wbits: int, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=wbits)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error:
        raise errors.InvalidRequest("the request body is not valid compressed data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise _too_large(max_bytes)
    if not inflater.eof:
        raise errors.InvalidRequest("the request body is truncated compressed data")
    return out


async def decoded(request: web.Request, *, timeout: float, max_bytes: int) -> bytes:
    """The body with its ``Content-Encoding`` undone (see the module docstring)."""
    cached: bytes | None = request.get(_DECODED_KEY)
    if cached is not None:
        return cached
    raw = await read(request, timeout=timeout, max_bytes=max_bytes)
    codings = [
        c.strip().lower()
        for c in request.headers.getall("Content-Encoding", [])
        for c in c.split(",")
        if c.strip()
    ]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
        body = raw
    elif len(codings) > 1:
        raise _unsupported("only one content coding (gzip or deflate) is accepted")
    elif codings[0] in ("gzip", "x-gzip"):
        body = _inflate(raw, wbits=16 + zlib.MAX_WBITS, max_bytes=max_bytes)
    elif codings[0] == "deflate":
        # RFC 9110 deflate is the zlib format; some clients send raw deflate: accept both.
        wbits = zlib.MAX_WBITS if raw[:1] and (raw[0] & 0x0F) == 8 else -zlib.MAX_WBITS
        body = _inflate(raw, wbits=wbits, max_bytes=max_bytes)
    else:
        raise _unsupported(
            f"content coding {codings[0][:32]!r} is not supported; use gzip, deflate or none"
        )
    request[_DECODED_KEY] = body
    return body


def _check_charset(request: web.Request) -> None:
    charset = request.charset
    if charset is not None and charset.strip().lower() not in _UTF8_NAMES:
        raise _unsupported(f"charset {charset[:32]!r} is not supported; send UTF-8")


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("the request body is not valid UTF-8") from None


async def form(request: web.Request, *, timeout: float, max_bytes: int) -> dict[str, list[str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body, every value of each."""
    if request.content_type != FORM_CONTENT_TYPE:
        raise errors.InvalidRequest(f"the request body must be {FORM_CONTENT_TYPE}")
    _check_charset(request)
    text = _utf8(await decoded(request, timeout=timeout, max_bytes=max_bytes))
    try:
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise errors.InvalidRequest(
            "a form field is not valid UTF-8 once percent-decoded"
        ) from None
    except ValueError:
        raise errors.InvalidRequest(
            f"the request body has more than {MAX_FORM_FIELDS} form fields"
        ) from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


async def json_value(request: web.Request, *, timeout: float, max_bytes: int) -> Any:
    """The JSON value of the body (RFC 8259, UTF-8); 400 ``invalid_request`` otherwise."""
    _check_charset(request)
    text = _utf8(await decoded(request, timeout=timeout, max_bytes=max_bytes))
    try:
        return strictjson.loads(text)
    except ValueError:
        raise errors.InvalidRequest("the request body must be JSON") from None
