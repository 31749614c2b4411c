"""The headless-Chromium driver (pccl_arrays/testing/browser.py) against a tiny page served on 127.0.0.1.

Skips where no chromium is installed (scripts/setup.sh installs Debian's where it can)."""

import http.server
import struct
import threading
from pathlib import Path

import pytest

from pccl_arrays.testing.browser import Browser, JavaScriptError, find_chromium

# The title turns 'ready' 200 ms after the script runs; ?err=1 logs one console.error, ?throw=1 throws from a
# second script. The inline icon keeps Chromium from asking for /favicon.ico, whose 404 is a console error too.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>loading</title><link rel="icon" href="data:,">
<style>body { font: 20px sans-serif; margin: 40px; background: #eef2f7 }
.card { background: #2b6cb0; color: #fff; padding: 24px 32px; border-radius: 12px; width: 480px }</style>
</head><body><div class="card"><h1>pccl status</h1><p>peers: 3, step 42</p></div>
<script>
  setTimeout(() => { document.title = 'ready'; }, 200);
  if (new URLSearchParams(location.search).get('err') === '1') console.error('status page failed: err=1');
</script>
<script>if (location.search.includes('throw=1')) throw new Error('page script blew up');</script>
</body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def browser():
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (scripts/setup.sh installs Debian's chromium where it can)")
    with Browser(timeout=20) as b:
        yield b
    assert b._proc.returncode is not None and not Path(b._profile).exists()  # killed, profile removed


@pytest.mark.timeout(60)
def test_clean_page_gets_ready_without_console_errors(browser, page_url):
    browser.open(page_url)
    assert browser.wait_for("document.title == 'ready'", timeout=10) is True
    assert browser.evaluate("document.querySelector('h1').textContent") == "pccl status"
    assert browser.evaluate("new Promise(r => setTimeout(() => r({n: [1, 2]}), 50))") == {"n": [1, 2]}
    with pytest.raises(JavaScriptError, match="no_such_thing"):
        browser.evaluate("no_such_thing.x")
    with pytest.raises(TimeoutError, match="window.never_set"):
        browser.wait_for("window.never_set", timeout=0.3)
    assert browser.console_errors() == []  # what evaluate() throws is not the page's error


@pytest.mark.timeout(60)
def test_console_error_is_collected(browser, page_url):
    browser.open(page_url + "?err=1")
    browser.wait_for("document.title == 'ready'", timeout=10)
    assert browser.console_errors() == ["status page failed: err=1"]


@pytest.mark.timeout(60)
def test_uncaught_exception_is_collected(browser, page_url):
    browser.open(page_url + "?throw=1")
    browser.wait_for("document.title == 'ready'", timeout=10)
    errors = browser.console_errors()
    assert len(errors) == 1 and "Error: page script blew up" in errors[0], errors


@pytest.mark.timeout(60)
def test_screenshot_writes_png(browser, page_url, tmp_path):
    browser.open(page_url)
    browser.wait_for("document.title == 'ready'", timeout=10)
    path = tmp_path / "status.png"
    browser.screenshot(path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1024
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (1280, 900)
