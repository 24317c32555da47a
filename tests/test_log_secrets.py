"""No log line carries a token, a key or a secret: uvicorn's access lines (the server
runs it with ``log_config=None``, so they go through Parley's JSON formatter) and
fields holding lists or dicts included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from parley.telemetry import get_logger
from parley.telemetry.logs import JsonFormatter, configure_logging
from parley.telemetry.redact import Redactor

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJhYmMiLCJqdGkiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The process's logging as ``parley serve`` sets it up, written to a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO")
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_a_uvicorn_access_line_for_a_websocket_url_holds_no_token(json_log: io.StringIO) -> None:
    # What uvicorn's HTTP protocol logs for every request (its own format and arguments);
    # with log_config=None its logger has no handler and propagates to ours.
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/v1/ws?token={JWT}", "1.1", 403
    )
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5001", f"/v1/ws?x=1&token={JWT}"
    )
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["uvicorn.access", "uvicorn.error"]
    text = json_log.getvalue()
    assert JWT not in text and "eyJ" not in text
    # Access lines lose the whole query string; secrets are masked everywhere else too.
    assert lines[0]["msg"] == '127.0.0.1:5000 - "GET /v1/ws?[REDACTED:query] HTTP/1.1" 403'
    assert lines[1]["msg"] == '127.0.0.1:5001 - "WebSocket /v1/ws?[REDACTED:query]" [accepted]'
    # Parley's own lines keep their query strings, with the secrets in them masked.
    get_logger("parley.test").info(f"fetched /v1/x?page=2&token={JWT}")
    last = json.loads(json_log.getvalue().splitlines()[-1])["msg"]
    assert last == "fetched /v1/x?page=2&token=[REDACTED:secret]"


def test_secrets_inside_list_and_dict_fields_are_masked() -> None:
    record = logging.LogRecord("parley.x", logging.INFO, __file__, 1, "m", None, None)
    record.fields = {
        "urls": [f"http://h/x?token={JWT}", {"auth": f"Bearer {JWT}"}],
        "headers": {"key": "sk-abcdefghijklmnop"},
    }
    line = JsonFormatter(Redactor()).format(record)
    assert JWT not in line and "sk-abcdefghijklmnop" not in line
    assert json.loads(line)["urls"][1]["auth"] == "Bearer [REDACTED:secret]"


def test_a_structured_field_with_a_token_is_masked(json_log: io.StringIO) -> None:
    get_logger("parley.test").warning(
        "webhook tool failed", error=f"401 for url http://h/?token={JWT}"
    )
    assert JWT not in json_log.getvalue()
