"""A scripted MLLP sender on a real socket: sends frames whole, split, or not at all, and
reads the ACKs back (the misbehaving peer style.md asks for)."""

from __future__ import annotations

import socket
import time

from adapters.hl7v2.mllp import encode_frame


class MllpPeer:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def send(self, payload: bytes, *, chunk: int | None = None, pause: float = 0.0) -> None:
        frame = encode_frame(payload)
        if chunk is None:
            self.sock.sendall(frame)
            return
        for i in range(0, len(frame), chunk):
            self.sock.sendall(frame[i : i + chunk])
            if pause:
                time.sleep(pause)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes:
        """The payload of the next frame the listener sends."""
        while b"\x1c\r" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("listener closed the connection")
            self._buffer += data
        frame, _, self._buffer = self._buffer.partition(b"\x1c\r")
        assert frame.startswith(b"\x0b"), frame[:20]
        return frame[1:]

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()


def segment(ack: bytes, name: str) -> list[str]:
    for line in ack.decode("utf-8").split("\r"):
        if line.startswith(name + "|"):
            return line.split("|")
    raise AssertionError(f"no {name} segment in ACK")
