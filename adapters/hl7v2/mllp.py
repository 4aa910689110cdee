"""MLLP (Minimal Lower Layer Protocol, HL7 v2 Implementation Guide, Appendix C): framing
and an asyncio listener.

A frame is ``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D). The listener reads frames from
many concurrent connections, hands each payload to a :class:`FrameHandler` and writes back
the reply it returns (an ACK) in its own frame. The handler decides what a reply means;
the listener only guarantees framing, size limits, idle timeouts and that a connection is
never dropped silently: an oversized frame is answered (the handler's ``reject``), and
every connection error is logged with the peer, never with message content.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("adapters.hl7v2.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


def encode_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP frame."""
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame that grew past the size limit; ``head`` holds its first bytes (for the ACK's MSH)."""

    head: bytes
    limit: int


@dataclass
class MllpDecoder:
    """Incremental MLLP frame decoder.

    :meth:`feed` returns, in order, each complete frame's payload and an
    :class:`OversizedFrame` for each frame that exceeded ``max_bytes`` (its rest is discarded
    up to its end block, so the connection stays usable). Bytes outside a frame (line
    noise, a stray CR between frames) are skipped and counted in ``skipped_bytes``.
    """

    max_bytes: int
    skipped_bytes: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False
    _oversized: OversizedFrame | None = None

    def feed(self, data: bytes) -> list[bytes | OversizedFrame]:
        out: list[bytes | OversizedFrame] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.skipped_bytes += len(data) - pos
                    break
                self.skipped_bytes += start - pos
                pos = start + 1
                self._in_frame = True
                self._oversized = None
                self._buffer.clear()
                continue
            end = data.find(b"\x1c", pos)
            chunk_end = len(data) if end < 0 else end
            if self._oversized is None:
                self._buffer += data[pos:chunk_end]
                if len(self._buffer) > self.max_bytes:
                    self._oversized = OversizedFrame(bytes(self._buffer[:4096]), self.max_bytes)
                    self._buffer.clear()
                    out.append(self._oversized)
            if end < 0:
                break
            pos = end + 1
            if data[pos : pos + 1] == b"\x0d":
                pos += 1
            if self._oversized is None:
                out.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
        return out


class FrameHandler(Protocol):
    """What the listener calls for each frame."""

    async def handle(self, payload: bytes, peer: str) -> bytes | None:
        """Return the reply payload (unframed), or None to send nothing."""

    async def reject_oversized(self, head: bytes, limit: int, peer: str) -> bytes | None:
        """Reply to a frame that exceeded the size limit (``head``: its first bytes)."""


class MllpListener:
    """An asyncio MLLP server: many connections, one frame at a time per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        handler: FrameHandler,
        max_message_bytes: int = 4 * 1024 * 1024,
        idle_timeout_s: float = 300.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        self.host = host
        self.port = port
        self._handler = handler
        self._max = max_message_bytes
        self._idle = idle_timeout_s
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._ssl, limit=2**20)
        log.info(
            "mllp listening",
            extra={
                "event": "mllp_listening",
                "host": self.host,
                "port": self.bound_port,
                "tls": self._ssl is not None,
            },
        )

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        decoder = MllpDecoder(self._max)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout=self._idle)
                except TimeoutError:
                    log.info("mllp idle timeout", extra={"event": "mllp_idle_close", "peer": peer})
                    break
                if not data:
                    break
                for frame in decoder.feed(data):
                    if isinstance(frame, OversizedFrame):
                        reply = await self._handler.reject_oversized(frame.head, frame.limit, peer)
                    else:
                        reply = await self._handler.handle(frame, peer)
                    if reply is not None:
                        writer.write(encode_frame(reply))
                        await writer.drain()
        except (ConnectionError, ssl.SSLError) as exc:
            log.info(
                "mllp connection lost",
                extra={"event": "mllp_connection_lost", "peer": peer, "error": type(exc).__name__},
            )
        except asyncio.CancelledError:
            pass
        finally:
            if decoder.skipped_bytes:
                log.warning(
                    "bytes outside MLLP frames skipped",
                    extra={"event": "mllp_noise", "peer": peer, "bytes": decoder.skipped_bytes},
                )
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
            if task is not None:
                self._connections.discard(task)
