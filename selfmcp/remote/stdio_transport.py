"""The stdio transport's two ends on asyncio pipes, for `mcp.server.stdio.stdio_server`.

The SDK's default wraps stdin and stdout in `anyio.wrap_file`, which hands every line
read and every write to a worker thread. On pipes (how MCP clients start a stdio
server) the event loop can read and write them directly. `claim_stdio()` keeps the
protocol's file descriptors to itself: fd 0 then reads /dev/null and fd 1 goes to
stderr, so a library or child process that prints cannot corrupt the stream.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from typing import Any

import anyio

# A JSON-RPC line can carry a 256 KiB body or 1 MiB of params, JSON-escaped.
MAX_LINE_BYTES = 16 * 1024 * 1024


def claim_stdio() -> tuple[int, int]:
    """Duplicate fds 0 and 1 for the protocol; point 0 at /dev/null and 1 at stderr."""
    protocol_in, protocol_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_in, protocol_out


class _Lines:
    """An async iterator over the lines of a pipe, read on the event loop."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    """`write()` and `flush()` as stdio_server calls them, on an asyncio pipe."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _is_stream(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


async def open_streams(protocol_in: int, protocol_out: int) -> tuple[Any, Any]:
    """(stdin, stdout) for stdio_server: pipes on the event loop, else anyio's threaded files."""
    if _is_stream(protocol_in) and _is_stream(protocol_out):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(protocol_in, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(protocol_out, "wb", 0))
        return _Lines(reader), _Writer(asyncio.StreamWriter(transport, protocol, None, loop))
    return (anyio.wrap_file(open(protocol_in, encoding="utf-8", errors="replace")),
            anyio.wrap_file(open(protocol_out, "w", encoding="utf-8")))
