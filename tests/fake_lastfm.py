"""A loopback HTTPS server that speaks the Last.fm web API as pylast uses it.

POST /2.0/ with form fields (api_key, method, mbid or artist/track); XML
answers in Last.fm's format: ``<lfm status="ok"><toptags>...`` or
``<lfm status="failed"><error code="6">...``. It serves planted tags and can
inject latency, HTTP 500/503, error 29, malformed XML and dropped
connections. Every request is recorded (time, method, key) for assertions.
Certificates come from ``trustme`` (a test certificate authority), so the
real client verifies TLS as usual.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

OK_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<lfm status="ok"><toptags artist="a" track="t">'
# Answers that once stopped a crawl (kind -> HTTP status, body).
BAD_BODIES = {
    "html200": (200, b"<html><body>Service temporarily unavailable</body></html>"),
    "html403": (403, b"<html><head><title>403 Forbidden</title></head></html>"),
    "nonutf8": (
        200,
        OK_HEAD + b"<tag><count>100</count><name>caf\xe9\xff</name></tag></toptags></lfm>",
    ),
    "empty_error": (200, b'<?xml version="1.0"?>\n<lfm status="failed"><error/></lfm>'),
    "count_na": (200, OK_HEAD + b"<tag><count>n/a</count><name>rock</name></tag></toptags></lfm>"),
    "empty_name": (
        200,
        OK_HEAD + b"<tag><count>90</count><name></name></tag><tag><count>80"
        b"</count><name>jazz</name></tag></toptags></lfm>",
    ),
}


class FakeLastFM:
    def __init__(
        self, tags: dict[str, list[tuple[str, int]]], api_key: str, tmp_dir, latency_s: float = 0.0
    ):
        import trustme

        self.tags, self.api_key, self.latency_s = tags, api_key, latency_s
        self.requests: list[tuple[float, str, str]] = []  # (time, method, key)
        self.lock = threading.Lock()
        # failures: key -> list of failure kinds for its next requests, in order
        self.failures: dict[str, list[str]] = defaultdict(list)
        self.always: str | None = None  # a failure kind for every request
        self.jitter_s = 0.0  # transit delay before a request counts, uniform in [0, jitter_s]
        self.rng = random.Random(0)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = str(tmp_dir / "fake_lastfm_ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                outer._answer(self, form)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.ws_server = f"127.0.0.1:{self.httpd.server_address[1]}/2.0/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def key_of(form: dict) -> str:
        if form.get("method", "").startswith("artist."):
            return f"artist:{form.get('artist', '')}"
        if form.get("mbid"):
            return f"track:{form['mbid']}"
        return "track:" + json.dumps(
            [form.get("artist", ""), form.get("track", "")], ensure_ascii=False
        )

    def _answer(self, h, form: dict) -> None:
        key = self.key_of(form)
        if self.jitter_s:  # transit delay: the request "arrives" (is counted) later
            with self.lock:
                transit = self.rng.uniform(0, self.jitter_s)
            time.sleep(transit)
        with self.lock:
            self.requests.append((time.monotonic(), form.get("method", ""), key))
            fail = self.always or (self.failures[key].pop(0) if self.failures[key] else None)
        if self.latency_s:
            time.sleep(self.latency_s)
        if fail == "drop":
            h.close_connection = True
            h.connection.close()
            return
        if fail in ("500", "503"):
            return self._send(h, int(fail), "<html>server error</html>")
        if fail == "malformed":
            return self._send(h, 200, '<lfm status="ok"><toptags><tag><name>unclosed')
        if fail in BAD_BODIES:
            status, body = BAD_BODIES[fail]
            return self._send_bytes(h, status, body)
        if fail is not None:  # a Last.fm error code
            return self._send(
                h,
                200,
                f'<?xml version="1.0" encoding="UTF-8"?>\n<lfm status='
                f'"failed"><error code="{fail}">Error {fail}</error></lfm>',
            )
        if form.get("api_key") != self.api_key:
            return self._send(
                h,
                200,
                '<lfm status="failed"><error code="10">Invalid API key - '
                "You must be granted a valid key by last.fm</error></lfm>",
            )
        if key not in self.tags:
            return self._send(
                h, 200, '<lfm status="failed"><error code="6">Track not found</error></lfm>'
            )
        body = "".join(
            f"<tag><count>{w}</count><name>{escape(t)}</name><url>https://www.last.fm"
            f"/tag/x</url></tag>"
            for t, w in self.tags[key]
        )
        self._send(
            h,
            200,
            f'<?xml version="1.0" encoding="UTF-8"?>\n<lfm status="ok">'
            f'<toptags artist="a" track="t">{body}</toptags></lfm>',
        )

    @staticmethod
    def _send(h, status: int, body: str) -> None:
        FakeLastFM._send_bytes(h, status, body.encode("utf-8"))

    @staticmethod
    def _send_bytes(h, status: int, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "text/xml; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def per_key(self) -> Counter:
        with self.lock:
            return Counter(k for _, _, k in self.requests)

    def max_per_second(self) -> int:
        """The most requests received in any 1-second window."""
        with self.lock:
            times = sorted(t for t, _, _ in self.requests)
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] < t - 1.0 + 1e-9:
                j += 1
            best = max(best, i - j + 1)
        return best

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
