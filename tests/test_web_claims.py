"""The page says what its latency figure is: the server's own (the browser tests check
that the figure shows; this checks the words it is shown with, without a browser)."""

from __future__ import annotations

import re
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "src" / "parley" / "web"


def test_the_latency_badge_says_it_is_the_server_side_figure():
    app = (WEB / "app.js").read_text()
    (shown,) = re.findall(r"ui\.latency\.textContent = `([^`]*)`", app)
    assert "voice-to-voice" in shown and "server-side" in shown, shown
    assert re.search(r"ui\.latency\.title = ", app)
    page = (WEB / "index.html").read_text()
    (span,) = re.findall(r'<span id="latency"[^>]*>', page)
    assert re.search(r'title="[^"]*measured on the server', span), span
