"""Real receivers for notification tests: an HTTP webhook endpoint and an SMTP server."""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from standardwebhooks import Webhook

from tests.services import free_port


@dataclass
class Received:
    """One request as the receiver saw it."""

    key: str
    status: int
    verified: bool
    body: dict[str, Any] | None


@dataclass
class WebhookReceiver:
    """A webhook endpoint that verifies signatures and drops repeated ids, like a good receiver.

    `fail_first` requests are answered 500; while `hold` is clear, requests wait for it (a
    receiver that is slow to answer); `arrived` is set whenever a request comes in.
    """

    secret: str | None = None
    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    hold: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.arrived.set()
                receiver.hold.wait(30)
                key = self.headers.get("webhook-id", "")
                try:
                    body = Webhook(receiver.secret or "").verify(raw, dict(self.headers.items()))
                    verified = True
                except Exception:  # noqa: BLE001 — any failure to verify is a 401
                    body, verified = None, False
                with receiver.lock:
                    if not verified:
                        status = 401
                    elif len(receiver.requests) < receiver.fail_first:
                        status = 500
                    else:
                        status = 200
                        receiver.accepted.setdefault(key, body)  # a repeat id is dropped
                    receiver.requests.append(Received(key, status, verified, body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


class _Collect:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.sink.lock:
            self.sink.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
            self.sink.peers.append(session.peer)  # type: ignore[attr-defined]
        return "250 OK"


class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.peers: list[tuple[str, int]] = []  # the connection each message came over
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()
