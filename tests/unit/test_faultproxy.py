"""The fault proxy itself: each fault does what the integration tests rely on."""

from __future__ import annotations

import http.server
import threading

import httpx
import pytest

from tests.faultproxy import Fault, FaultProxy, Rule

BODY = b"x" * 10000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_forwards_untouched_and_records(upstream):
    with FaultProxy(upstream) as p:
        r = httpx.get(f"http://{p.host}/v2/a/blobs/x", timeout=5)
    assert r.status_code == 200 and r.content == BODY
    assert [(e.path, e.fault) for e in p.events] == [("/v2/a/blobs/x", None)]


@pytest.mark.parametrize("fault", [Fault.HTTP_503, Fault.HTTP_502, Fault.RESET, Fault.TRUNCATE])
def test_each_fault_breaks_only_the_matching_requests(upstream, fault):
    with FaultProxy(upstream, rules=[Rule("/v2/bad/", fault)]) as p:
        assert httpx.get(f"http://{p.host}/v2/good/x", timeout=5).content == BODY
        if fault in (Fault.HTTP_503, Fault.HTTP_502):
            assert httpx.get(f"http://{p.host}/v2/bad/x", timeout=5).status_code == int(fault.value)
        else:
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{p.host}/v2/bad/x", timeout=5)
    assert [e.fault for e in p.faults()] == [fault]


def test_stall_outlasts_the_client_timeout(upstream):
    with (
        FaultProxy(upstream, rules=[Rule("/v2/", Fault.STALL)], stall_seconds=30) as p,
        pytest.raises(httpx.ReadTimeout),
    ):
        httpx.get(f"http://{p.host}/v2/x", timeout=0.5)


def test_rate_is_roughly_honoured(upstream):
    with FaultProxy(upstream, rate=0.2, kinds=[Fault.HTTP_503], seed=1) as p:
        codes = [httpx.get(f"http://{p.host}/v2/x", timeout=5).status_code for _ in range(100)]
    assert 8 <= codes.count(503) <= 35


def test_only_loopback_upstreams():
    with pytest.raises(ValueError):
        FaultProxy("10.0.0.1:5000")
