"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for latency measurements.

httpx spends about a millisecond of CPU per request on this machine, which is as large as
the latencies being measured, so the benchmarks speak plain HTTP/1.1 themselves. It handles
only what uvicorn sends back to our API: a status line, headers and a Content-Length body.
"""

import asyncio
import json
from typing import Any

REQUEST_TIMEOUT_SECONDS = 10.0


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request and return the status code and the body; reconnect once if closed."""
        if self._writer is None:
            await self.open()
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        try:
            return await asyncio.wait_for(self._exchange(head + payload), REQUEST_TIMEOUT_SECONDS)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            await self.close()
            raise

    async def _exchange(self, message: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(message)
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection before answering")
        status = int(status_line.split()[1])
        length = 0
        keep_alive = True
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep_alive = False
        body = await self._reader.readexactly(length) if length else b""
        if not keep_alive:
            await self.close()
        return status, body


class HttpPool:
    """A fixed number of keep-alive connections; a request waits for a free one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self._all = [HttpConnection(host, port) for _ in range(size)]
        for connection in self._all:
            self._idle.put_nowait(connection)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        connection = await self._idle.get()
        try:
            return await connection.request(method, path, body)
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
