"""A lean HTTP/1.1 client for the API server's request/response calls (not watches).

Why not aiohttp here: at 10,000 Agents the controller sends tens of thousands of small requests
(status patches, Events), and aiohttp's per-request machinery (request and response objects,
URL parsing, header multidicts, timers, tracing hooks, a payload writer) cost about as much CPU as
the reconciles themselves. A request here is one ``transport.write`` of prebuilt bytes and one
future resolved by a parser in ``data_received``. Watches stay on aiohttp (``client.watch``): a
handful of long streams, where per-request cost does not matter.

Guarantees:
- Connections are kept alive and reused (one request at a time each; no pipelining), at most
  ``limit`` open at once; a connection is never reused after ``Connection: close``, an error, a
  cancelled or timed-out call (its state is unknown), or :data:`IDLE_SECONDS` unused (so a server
  that closes idle connections is not raced).
- Responses are read by ``Content-Length``, ``Transfer-Encoding: chunked``, or until the server
  closes; no content encoding is asked for, so none is decoded.
- Every transport failure raises an ``OSError`` (``ConnectionError`` for a connection that ended
  or answered something that is not HTTP/1.x); deadlines are the caller's (``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from typing import cast

IDLE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused."""
MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class _Connection(asyncio.Protocol):
    """One connection; parses one response per ``send``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._buffer = bytearray()
        self._body = bytearray()
        self._status = 0
        self._length: int | None = None  # bytes of body still due (Content-Length)
        self._chunked = False
        self._chunk_left = 0  # bytes (with the chunk's CRLF) still due of the current chunk
        self._until_eof = False
        self._keep_alive = True

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: the connection is out of step
            return
        self._buffer += data
        try:
            self._parse()
        except (ValueError, ProtocolError) as exc:
            self._fail(ProtocolError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._until_eof and self._status:
            self._body += self._buffer
            self._finish()
            return
        self._waiter.set_exception(
            ConnectionResetError("the server closed the connection") if exc is None else exc
        )

    # --- one exchange -------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.transport is None or self._waiter is not None:
            raise RuntimeError("a connection carries one request at a time")
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._body = bytearray()
        self._status = 0
        self._length = None
        self._chunked = self._until_eof = False
        self._chunk_left = 0
        self._keep_alive = True
        self.reusable = False
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = self._keep_alive and not self.closed and not self._buffer
        if not self.reusable:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, bytes(self._body)))

    def _parse(self) -> None:
        if not self._status and not self._parse_head():
            return
        if self._chunked:
            self._parse_chunks()
        elif self._length is not None:
            take = min(self._length, len(self._buffer))
            self._body += self._buffer[:take]
            del self._buffer[:take]
            self._length -= take
            if self._length == 0:
                self._finish()
        # else: until the server closes (connection_lost finishes)

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("response head too large")
            return False
        status_line, _, fields = bytes(self._buffer[:end]).partition(b"\r\n")
        del self._buffer[: end + 4]
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ProtocolError(f"status line {status_line[:80]!r}")
        status = int(rest[:3])
        if 100 <= status < 200:
            return self._parse_head()  # an interim answer (never asked for): the real one follows
        # Only three fields matter; each is found by its name at a line start (a CRLF before
        # it), case-insensitively, without splitting the head into a dict.
        lowered = b"\r\n" + fields.lower()
        self._status = status
        self._keep_alive = b"close" not in _field(lowered, b"connection") and version != b"HTTP/1.0"
        length = _field(lowered, b"content-length")
        if b"chunked" in _field(lowered, b"transfer-encoding"):
            self._chunked = True
        elif length:
            self._length = int(length)
            if self._length < 0:
                raise ProtocolError("negative Content-Length")
        elif status in (204, 304):
            self._length = 0
        else:
            self._until_eof = True
            self._keep_alive = False
        return True

    def _parse_chunks(self) -> None:
        while True:
            if self._chunk_left:
                take = min(self._chunk_left, len(self._buffer))
                # The last two bytes of each chunk are its CRLF, not data.
                data_left = self._chunk_left - 2
                self._body += self._buffer[: min(take, max(data_left, 0))]
                del self._buffer[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    return
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError("chunk size line too long")
                return
            size = int(bytes(self._buffer[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                # The last chunk, then optional trailers, then an empty line.
                rest = self._buffer[line_end + 2 :]
                if rest.startswith(b"\r\n"):
                    del self._buffer[: line_end + 4]
                elif (trailers_end := rest.find(b"\r\n\r\n")) >= 0:
                    del self._buffer[: line_end + 2 + trailers_end + 4]
                else:
                    return
                self._finish()
                return
            del self._buffer[: line_end + 2]
            self._chunk_left = size + 2


def _field(lowered: bytes, name: bytes) -> bytes:
    """The value of header field ``name`` in ``lowered`` (a lower-cased head after its status
    line, with a leading CRLF), or b"" when absent."""
    start = lowered.find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    end = lowered.find(b"\r\n", start)
    return lowered[start : end if end >= 0 else len(lowered)].strip()


class Pool:
    """Kept-alive HTTP/1.1 connections to one server (see module guarantees)."""

    def __init__(self, server: str, *, ssl_context: ssl.SSLContext | None, limit: int = 100):
        parts = urllib.parse.urlsplit(server)
        self._tls = parts.scheme == "https"
        self._ssl = ssl_context if self._tls else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default = (self._tls and self._port == 443) or (not self._tls and self._port == 80)
        self._authority = host if default else f"{host}:{self._port}"
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._open: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            _Connection,
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None,
        )
        self._open.add(protocol)
        return protocol

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body). ``path`` is already percent-encoded."""
        target = self._prefix + path + (f"?{query}" if query else "")
        head = [f"{method} {target} HTTP/1.1", f"Host: {self._authority}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        async with self._slots:
            connection = self._take_idle() or await self._connect()
            try:
                result = await connection.send(data)
            except BaseException:
                connection.close()  # cancelled or failed midway: its state is unknown
                self._open.discard(connection)
                raise
            if connection.reusable:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                self._open.discard(connection)
            return result

    def close(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
