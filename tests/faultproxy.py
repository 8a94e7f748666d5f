"""A fault-injecting HTTP proxy on 127.0.0.1, for tests (stdlib only).

    client (skopeo) ──► FaultProxy 127.0.0.1:<port> ──► upstream registry 127.0.0.1:<port>

Every request is read up to the end of its head, rewritten to `Connection: close` (so one TCP
connection carries exactly one request and a fault never leaks into the next request), and then
either forwarded untouched or answered with a fault:

    RESET     the client's socket is closed with SO_LINGER 0: the peer sees "connection reset"
    HTTP_503  "503 Service Unavailable", nothing forwarded
    HTTP_502  "502 Bad Gateway", nothing forwarded
    STALL     nothing is answered until `stall_seconds` pass (or the proxy stops): a hung registry
    TRUNCATE  forwarded, but the response is cut off halfway through its body (or its head, if it
              has no body): the client sees an unexpected EOF

Which requests fail is decided per request by `Rule`s (first match wins) and, for the rest, by
`rate`/`kinds` from a seeded random generator. Every decision is recorded in `events`, so a test
can assert that faults really happened. Only loopback upstreams are accepted: nothing a test
starts may talk to another address.
"""

from __future__ import annotations

import enum
import random
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

HEAD_LIMIT = 64 * 1024


class Fault(enum.Enum):
    RESET = "reset"
    HTTP_503 = "503"
    HTTP_502 = "502"
    STALL = "stall"
    TRUNCATE = "truncate"


ALL_FAULTS: tuple[Fault, ...] = tuple(Fault)


@dataclass(frozen=True)
class Rule:
    """Fault every request whose path contains `path_contains` (e.g. "/v2/apps/web/")."""

    path_contains: str
    fault: Fault


@dataclass(frozen=True)
class Event:
    method: str
    path: str
    fault: Fault | None  # None: forwarded untouched


@dataclass
class FaultProxy:
    upstream: str  # "127.0.0.1:<port>"
    rate: float = 0.0  # share of requests (not matched by a rule) that get a random fault
    kinds: Sequence[Fault] = ALL_FAULTS
    rules: list[Rule] = field(default_factory=list)
    seed: int = 0
    stall_seconds: float = 120.0
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        host, _, port = self.upstream.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"upstream {self.upstream!r}: the fault proxy only forwards to loopback")
        self._upstream = ("127.0.0.1", int(port))
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy", daemon=True)

    # --- public --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            # close() alone does not wake a thread blocked in accept(); shutdown() does
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate

    def faults(self) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.fault is not None]

    # --- internals -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            fault = next((r.fault for r in self.rules if r.path_contains in path), None)
            if fault is None and self.rate > 0 and self._rng.random() < self.rate:
                fault = self._rng.choice(list(self.kinds))
            self.events.append(Event(method, path, fault))
            return fault

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        fault: Fault | None = None
        try:
            client.settimeout(30)
            head, rest = _read_head(client)
            if head is None:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, tail = request_line.partition(" ")
            path = tail.rpartition(" ")[0] or tail
            fault = self._decide(method, path)
            if fault is Fault.RESET:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault in (Fault.HTTP_503, Fault.HTTP_502):
                status = "503 Service Unavailable" if fault is Fault.HTTP_503 else "502 Bad Gateway"
                body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by faultproxy"}]}'
                client.sendall(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                return
            if fault is Fault.STALL:
                self._stop.wait(self.stall_seconds)
                return
            upstream = socket.create_connection(self._upstream, timeout=30)
            upstream.sendall(_close_after(head) + rest)
            pump = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
            pump.start()  # request body (uploads), if any
            if fault is Fault.TRUNCATE:
                _truncated_response(upstream, client, head_only=method == "HEAD")
            else:
                _pipe(upstream, client)
        except OSError:
            pass  # the client or upstream went away: nothing to report to anyone
        finally:
            for s in (client, upstream):
                if s is None:
                    continue
                if fault is not Fault.RESET:
                    try:
                        # wakes the pump thread's recv(); a bare close() would wait for it and
                        # the peer would see no EOF (RESET must skip it: it sends a FIN)
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                try:
                    s.close()
                except OSError:
                    pass


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk or (not buf and chunk[:1] == b"\x16"):
            # EOF, or a TLS ClientHello: skopeo tries HTTPS first and falls back to plain HTTP
            # at once when the connection closes (waiting would cost its 10 s handshake timeout)
            return None, b""
        buf += chunk
        if len(buf) > HEAD_LIMIT:
            return None, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _close_after(head: bytes) -> bytes:
    """The request head with any Connection header replaced by `Connection: close`."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [ln for ln in lines if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _truncated_response(upstream: socket.socket, client: socket.socket, *, head_only: bool) -> None:
    head, body = _read_head(upstream)
    if head is None:
        return
    if head_only:  # a HEAD answer has no body to cut
        client.sendall(head[: len(head) // 2])
        return
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if length <= 1:
        client.sendall(head[: len(head) // 2])  # no body to cut: cut the head
        return
    while len(body) < length // 2:
        chunk = upstream.recv(65536)
        if not chunk:
            break
        body += chunk
    client.sendall(head + body[: length // 2])
