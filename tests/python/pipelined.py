"""HTTP/1.1 pipelining over a few keep-alive connections: tens of thousands of small requests
to the proxy in seconds from one Python process (one request at a time would take minutes)."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

BATCH = 500


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        self.buf += chunk

    def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def answer(self) -> Answer:
        status = int(self.line().split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while line := self.line():
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.line().split(b";")[0], 16):
                body += self.exactly(size)
                self.line()
            while self.line():
                pass
            return Answer(status, headers, bytes(body))
        n = int(headers.get("content-length", "0"))
        return Answer(status, headers, self.exactly(n) if status != 304 else b"")


def _run(base_url: str, raw: list[bytes]) -> list[Answer]:
    u = urlsplit(base_url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    reader = _Reader(sock)
    out: list[Answer] = []
    try:
        for start in range(0, len(raw), BATCH):
            batch = raw[start : start + BATCH]
            sock.sendall(b"".join(batch))
            out.extend(reader.answer() for _ in batch)
    finally:
        sock.close()
    return out


def send_all(base_url: str, raw: list[bytes], connections: int = 4) -> list[Answer]:
    """Sends every request (pipelined, in order per connection); answers in request order."""
    shards = [raw[i::connections] for i in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        results = list(pool.map(lambda s: _run(base_url, s), shards))
    out: list[Answer] = [None] * len(raw)  # type: ignore[list-item]
    for i, shard in enumerate(results):
        for j, a in enumerate(shard):
            out[i + j * connections] = a
    return out
