"""The lean HTTP/1.1 pool (``agentauth.kube.http``) against a raw asyncio server that answers
in each framing a server may use: ``Content-Length``, chunked (split across writes, with
trailers), until close, and ``Connection: close``; connections are reused only when they may be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agentauth.kube import http

Answer = Callable[[bytes], list[bytes]]
Serve = Callable[[Answer], Awaitable[tuple["RawServer", int]]]


class RawServer:
    """Answers each request with the byte pieces ``answer(request head)`` gives (written one
    by one, drained between), closing after a piece equal to ``CLOSE``."""

    CLOSE = b"<close>"

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                for piece in self.answer(head):
                    if piece == self.CLOSE:
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RawServer] = []

    async def start(answer: Answer) -> tuple[RawServer, int]:
        server = RawServer(answer)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        if server.server is not None:
            server.server.close()


async def test_content_length_answers_reuse_one_connection(serve: Serve) -> None:
    server, port = await serve(lambda head: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    pool = http.Pool(f"http://127.0.0.1:{port}", ssl_context=None)
    for _ in range(3):
        assert await pool.request("GET", "/x", headers={}) == (200, b"{}")
    assert server.connections == 1
    pool.close()


async def test_chunked_answers_split_across_writes_with_trailers(
    serve: Serve,
) -> None:
    pieces = [
        b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"',
        b"\r\n3;ext=1\r\n:1}\r",
        b"\n0\r\nX-Trailer: t\r\n\r\n",
    ]
    server, port = await serve(lambda head: pieces)
    pool = http.Pool(f"http://127.0.0.1:{port}", ssl_context=None)
    assert await pool.request("POST", "/x", headers={}, body=b"{}") == (201, b'{"a":1}')
    assert await pool.request("POST", "/x", headers={}, body=b"{}") == (201, b'{"a":1}')
    assert server.connections == 1
    pool.close()


async def test_connection_close_and_until_close_answers_are_not_reused(
    serve: Serve,
) -> None:
    def answer(head: bytes) -> list[bytes]:
        if head.startswith(b"GET /eof"):
            return [b"HTTP/1.1 200 OK\r\n\r\nall of it", RawServer.CLOSE]
        return [b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"]

    server, port = await serve(answer)
    pool = http.Pool(f"http://127.0.0.1:{port}", ssl_context=None)
    assert await pool.request("GET", "/eof", headers={}) == (200, b"all of it")
    assert await pool.request("GET", "/gone", headers={}) == (404, b"")
    assert await pool.request("GET", "/eof", headers={}) == (200, b"all of it")
    assert server.connections == 3
    pool.close()


async def test_a_connection_closed_midway_and_garbage_raise_connection_errors(
    serve: Serve,
) -> None:
    def answer(head: bytes) -> list[bytes]:
        if head.startswith(b"GET /cut"):
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", RawServer.CLOSE]
        return [b"SSH-2.0-nope\r\n\r\n"]

    _, port = await serve(answer)
    pool = http.Pool(f"http://127.0.0.1:{port}", ssl_context=None)
    with pytest.raises(ConnectionError):
        await pool.request("GET", "/cut", headers={})
    with pytest.raises(http.ProtocolError):
        await pool.request("GET", "/garbage", headers={})
    pool.close()
