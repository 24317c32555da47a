"""A protocol-exact local fake of the part of Twilio's REST API a live call uses: updating
a call (``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``).

Like Twilio it wants HTTP Basic auth (AccountSid:AuthToken; else 401, error 20003), a
form-encoded body, ``Status`` (``completed`` or ``canceled``) or ``Twiml`` (a
``<Response>`` document; else 400, error 12100) but not both with ``Url``; it answers the
call resource as JSON (the fields of Twilio's Call resource), 404 (error 20404) for a
call it does not know and 400 (error 21220) for updating a call that has ended. Each
request is recorded with its ``time.monotonic()`` arrival time, which is the clock of
asyncio's event loop: comparable with a test's ``loop.time()``.

``fail_with`` makes every update answer that status (Twilio down); ``on_update`` is
called (in the server's thread) after an update Twilio would have done — the test makes
the fake media stream stop there, as Twilio stops a stream whose call was redirected or
ended.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_VERSION = "2010-04-01"
CALL_PATH = re.compile(
    rf"^/{API_VERSION}/Accounts/(?P<account>AC[0-9a-f]{{32}})/Calls/(?P<call>CA[0-9a-f]{{32}})\.json$"
)
Json = dict[str, Any]


@dataclass
class RestRequest:
    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    form: dict[str, str]
    authorized: bool
    status: int = 0  # what the fake answered


@dataclass
class FakeCall:
    sid: str
    from_number: str = "+15551230000"
    to_number: str = "+15559870000"
    status: str = "in-progress"
    twiml: str | None = None


@dataclass
class FakeTwilioRest:
    account_sid: str
    auth_token: str
    url: str = ""
    calls: dict[str, FakeCall] = field(default_factory=dict)
    requests: list[RestRequest] = field(default_factory=list)
    fail_with: int | None = None
    on_update: Callable[[FakeCall, RestRequest], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_call(self, call_sid: str, **kw: Any) -> FakeCall:
        call = FakeCall(call_sid, **kw)
        self.calls[call_sid] = call
        return call

    def updates(self, call_sid: str) -> list[RestRequest]:
        """The update requests for ``call_sid`` Twilio would have carried out."""
        path = f"/Calls/{call_sid}.json"
        return [r for r in self.requests if r.path.endswith(path) and r.status == 200]

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Json]:
        """The status and JSON body Twilio answers (and the request recorded)."""
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        request = RestRequest(time.monotonic(), method, path, form, self._authorized(headers))
        with self._lock:
            self.requests.append(request)
            status, payload, call = self._answer(request, headers)
            request.status = status
        if call is not None and self.on_update is not None:
            self.on_update(call, request)
        return status, payload

    def _authorized(self, headers: Any) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return bool(headers.get("Authorization", "") == f"Basic {expected}")

    def _answer(self, request: RestRequest, headers: Any) -> tuple[int, Json, FakeCall | None]:
        if not request.authorized:
            return 401, _error(20003, "Authenticate", 401), None
        if self.fail_with is not None:
            return self.fail_with, _error(20500, "An internal server error has occurred", 500), None
        match = CALL_PATH.match(request.path)
        call = self.calls.get(match["call"]) if match else None
        if match is None or match["account"] != self.account_sid or call is None:
            message = f"The requested resource {request.path} was not found"
            return 404, _error(20404, message, 404), None
        if request.method != "POST":
            return 405, _error(20004, "Method not allowed", 405), None
        if "x-www-form-urlencoded" not in headers.get("Content-Type", ""):
            return 400, _error(20001, "Content-Type must be form-encoded", 400), None
        status, twiml = request.form.get("Status"), request.form.get("Twiml")
        if twiml is not None and "Url" in request.form:
            return 400, _error(20001, "Twiml and Url are mutually exclusive", 400), None
        if status is not None and status not in ("completed", "canceled"):
            return 400, _error(20001, f"Status {status!r} is not valid", 400), None
        if twiml is not None and not _is_response(twiml):
            return 400, _error(12100, "Document parse failure", 400), None
        if call.status != "in-progress":
            return 400, _error(21220, "Call is not in-progress. Cannot redirect.", 400), None
        if status is not None:
            call.status = status
        if twiml is not None:
            call.twiml = twiml
        return 200, self._resource(call), call

    def _resource(self, call: FakeCall) -> Json:
        """The Call resource as Twilio returns it (its documented fields)."""
        now = formatdate(usegmt=True)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json"
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "inbound",
            "duration": None,
            "end_time": now if call.status == "completed" else None,
            "forwarded_from": None,
            "from": call.from_number,
            "from_formatted": call.from_number,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": "PN" + "0" * 32,
            "price": None,
            "price_unit": "USD",
            "sid": call.sid,
            "start_time": now,
            "status": call.status,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
            },
            "to": call.to_number,
            "to_formatted": call.to_number,
            "trunk_sid": None,
            "uri": uri,
            "queue_time": "0",
        }


def _error(code: int, message: str, status: int) -> Json:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _is_response(twiml: str) -> bool:
    try:
        return ET.fromstring(twiml).tag == "Response"
    except ET.ParseError:
        return False


def dialled(twiml: str) -> str | None:
    """The number of ``<Response><Dial>number</Dial></Response>``, else None."""
    root = ET.fromstring(twiml)
    dial = root.find("./Dial")
    if root.tag != "Response" or dial is None or len(root) != 1:
        return None
    return (dial.text or "").strip() or None


@contextmanager
def fake_twilio_rest(account_sid: str, auth_token: str) -> Iterator[FakeTwilioRest]:
    """The fake, served on a free port of 127.0.0.1 (``.url`` is the API root)."""
    fake = FakeTwilioRest(account_sid, auth_token)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, payload = fake.answer(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
