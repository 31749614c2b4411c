"""Headless Chromium for tests: load a page, run JavaScript in it, collect its console errors, screenshot it.

Standard library only; needs Debian's ``chromium`` (scripts/setup.sh), without which find_chromium() is None.

How this works. With ``--remote-debugging-pipe`` Chromium speaks the Chrome DevTools Protocol over inherited
fds instead of a websocket: it reads commands from fd 3 and writes responses and events to fd 4, each a JSON
object ended by a NUL byte. pass_fds keeps fd numbers and ours are not 3 and 4, so a one-line Python
trampoline dup2()s the pipe ends (first moved above 9, where they cannot collide) onto 3 and 4 and execs
chromium. A reader thread splits fd 4 on NULs, hands each response to the caller waiting on its id and
records console errors and page loads. open() creates a page target and attaches with flatten=True, so the
page's messages share the pipe, tagged with its sessionId; the page has loaded when a Page.loadEventFired
follows the main frame's commit (Page.frameNavigated) of the loaderId that Page.navigate returned, so neither
a late load of about:blank nor a script redirect fools it. Every wait has a deadline; a dead browser (EOF on
fd 4, or its process gone) fails waits at once with the tail of its output, kept by a second thread in a
bounded buffer. close() kills the browser's process group, then removes its profile (and $TMPDIR).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

FLAGS = ["--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
VIEWPORT = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
# The profile, chromium's $TMPDIR too, goes in ms from a tmpfs, not the 0.4 s its ~200 files can take on disk.
_PROFILES = "/dev/shm" if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free > 1 << 30 else None
_TRAMPOLINE = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
               "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")


def _browser_env(profile: str) -> dict:
    """Our environment with TMPDIR in the profile (close() removes all) and no LD_PRELOAD (a sanitizer's runtime,
    under scripts/sanitize.sh, is not for chromium)."""
    env = dict(os.environ, TMPDIR=profile)
    env.pop("LD_PRELOAD", None)
    return env


def find_chromium() -> str | None:
    """The first of chromium, chromium-browser, google-chrome on PATH, or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class BrowserError(RuntimeError):
    """Chromium could not start, died, was closed, or answered a command with an error."""


class JavaScriptError(BrowserError):
    """An evaluated expression threw, or the promise it returned was rejected."""


def _text(obj: dict) -> str:  # a CDP RemoteObject (console argument) or exceptionDetails, as the console shows it
    obj = obj.get("exception", obj)
    key = next((k for k in ("value", "unserializableValue", "description", "text") if k in obj), "type")
    return obj.get(key, "") if isinstance(obj.get(key, ""), str) else json.dumps(obj[key])


class Browser(contextlib.AbstractContextManager):
    """One headless Chromium showing one page at a time. `timeout` (s) bounds each call, and open() as a whole."""

    def __init__(self, timeout: float = 30.0, executable: str | None = None):
        if not (exe := executable or find_chromium()):
            raise BrowserError("no chromium, chromium-browser or google-chrome on PATH")
        self.timeout = timeout
        self._cond, self._write_lock, self._next_id = threading.Condition(), threading.Lock(), 0
        self._replies, self._errors = {}, []  # id -> its response (None until it comes); console_errors()
        self._history: dict[str, list] = {}  # sessionId -> its main frame's commits (loaderIds) and "load"s in order
        self._output: collections.deque[bytes] = collections.deque(maxlen=64)  # its last 64 reads of <= 4 KiB
        self._closed, self._proc, self._target, self._session, self._threads = False, None, None, None, []
        self._profile = tempfile.mkdtemp(prefix="pccl-chromium-", dir=_PROFILES)
        cmd_r, self._cmd_w = os.pipe()  # commands: we write, chromium reads its fd 3
        self._evt_r, evt_w = os.pipe()  # responses and events: chromium writes its fd 4, we read
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, evt_w)]
        for fd in (cmd_r, evt_w):
            os.close(fd)
        try:
            argv = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, *map(str, child), exe, *FLAGS,
                    f"--user-data-dir={self._profile}", "about:blank"]
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, pass_fds=child, start_new_session=True,
                                          env=_browser_env(self._profile))
            os.set_blocking(self._cmd_w, False)
            for target in (self._read_events, self._read_output):
                self._threads.append(threading.Thread(target=target, daemon=True, name=f"chromium{target.__name__}"))
                self._threads[-1].start()
            self._call("Browser.getVersion")  # answers once it is up
        except BaseException:
            self.close()
            raise
        finally:  # chromium has them now (its death is still seen: _wait polls the process too)
            for fd in child:
                os.close(fd)

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, url: str) -> None:
        """Shows `url` in a new page (closing the previous one) and waits for its load event."""
        deadline = time.monotonic() + self.timeout
        if self._target:
            self._call("Target.closeTarget", {"targetId": self._target}, deadline=deadline)
            self._target = self._session = None
        self._target = self._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        attach = {"targetId": self._target, "flatten": True}
        self._session = session = self._call("Target.attachToTarget", attach, deadline=deadline)["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self._call(method, deadline=deadline, page=True)
        self._call("Emulation.setDeviceMetricsOverride", VIEWPORT, deadline=deadline, page=True)
        nav = self._call("Page.navigate", {"url": url}, deadline=deadline, page=True)
        if nav.get("errorText"):
            raise BrowserError(f"could not load {url}: {nav['errorText']}")
        seen, loader = self._history.setdefault(session, []), nav["loaderId"]  # the reader appends to `seen`
        self._wait(lambda: loader in seen and "load" in seen[seen.index(loader):] or None, deadline, f"loading {url}")

    def evaluate(self, expression: str, timeout: float | None = None):
        """The value of a JavaScript expression in the page (a promise is awaited); JavaScriptError if it throws."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self._call("Runtime.evaluate", params, deadline=deadline, page=True, what=f"evaluate({expression!r})")
        if "exceptionDetails" in result:
            raise JavaScriptError(f"{expression!r} threw: {_text(result['exceptionDetails'])}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, interval: float = 0.05):
        """Polls `expression` until it is truthy and returns its value; one that throws is not yet true."""
        deadline = time.monotonic() + (timeout := self.timeout if timeout is None else timeout)
        while True:
            try:
                if value := self.evaluate(expression, timeout=max(deadline - time.monotonic(), 0.01)):
                    return value
                last = f"last value {value!r}"
            except (JavaScriptError, TimeoutError) as e:  # not BrowserError: a dead browser ends the wait
                last = str(e)
            if (left := deadline - time.monotonic()) <= 0:
                raise TimeoutError(f"{expression!r} was not truthy within {timeout:g} s ({last})")
            time.sleep(min(interval, left))

    def console_errors(self) -> list[str]:
        """Texts of the console.error/console.assert calls, uncaught exceptions and error log entries so far."""
        return list(self._errors)  # copied under the GIL: atomic

    def screenshot(self, path: str | os.PathLike) -> None:
        """Writes a PNG of the page's viewport (1280 x 900) to `path`."""
        data = self._call("Page.captureScreenshot", {"format": "png"}, page=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        """Kills the browser with its whole process group and removes its profile; safe to call again."""
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            for thread in self._threads:
                thread.join(timeout=2)
            self._proc.stdout.close()
        for fd in (self._cmd_w, self._evt_r):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _call(self, method: str, params: dict | None = None, *, deadline: float | None = None, page: bool = False,
              what: str | None = None) -> dict:
        """Sends a command (to the open page's session if `page`) and returns its result; `what` names it in errors."""
        deadline, what = time.monotonic() + self.timeout if deadline is None else deadline, what or method
        if page and self._session is None:
            raise BrowserError(f"{what}: no page; call open(url) first")
        with self._cond:
            mid = self._next_id = self._next_id + 1
            self._replies[mid] = None
        msg = {"id": mid, "method": method, "params": params or {}} | ({"sessionId": self._session} if page else {})
        data = json.dumps(msg).encode() + b"\0"
        try:
            with self._write_lock:  # the pipe is non-blocking, so a browser that stops reading cannot hang us
                while data:
                    self._wait(lambda: select.select([], [self._cmd_w], [], 0)[1] or None, deadline, what)
                    try:  # select said writable and we hold the lock, so this writes at least a little
                        data = data[os.write(self._cmd_w, data):]
                    except BrokenPipeError:  # it died
                        raise self._dead(what) from None
            reply = self._wait(lambda: self._replies[mid], deadline, what)
        finally:
            with self._cond:
                del self._replies[mid]
        if "error" in reply:
            raise BrowserError(f"{what}: {reply['error'].get('message')} {reply['error'].get('data', '')}".rstrip())
        return reply.get("result", {})

    def _wait(self, ready, deadline: float, what: str):
        with self._cond:
            while self._closed or (value := ready()) is None:
                if self._closed or not self._threads[0].is_alive() or self._proc.poll() is not None:
                    raise self._dead(what)
                if (left := deadline - time.monotonic()) <= 0:
                    raise TimeoutError(f"{what}: no answer from chromium in time")
                self._cond.wait(min(left, 0.05))
            return value

    def _dead(self, what: str) -> BrowserError:
        if self._closed:
            return BrowserError(f"{what}: the browser was closed")
        with contextlib.suppress(subprocess.TimeoutExpired):  # let it finish dying, its last words reach the buffer
            self._proc.wait(timeout=1)
            self._threads[-1].join(timeout=1)
        tail = b"".join(self._output).decode(errors="replace")[-3000:]
        return BrowserError(f"{what}: chromium died (exit code {self._proc.returncode}); its output ended:\n{tail}")

    def _read_events(self) -> None:  # returns at EOF: waits see that it is gone (or the process) within 50 ms
        parts: list[bytes] = []
        while not self._closed:  # select, not a blocking read: close() may close the fd after a join times out
            if not select.select([self._evt_r], [], [], 0.25)[0]:
                continue
            if not (chunk := os.read(self._evt_r, 1 << 16)):
                break
            parts.append(chunk)
            if b"\0" in chunk:  # one or more messages are complete
                *messages, rest = b"".join(parts).split(b"\0")
                parts = [rest]
                with self._cond:
                    for message in messages:
                        self._dispatch(json.loads(message))
                    self._cond.notify_all()

    def _dispatch(self, msg: dict) -> None:
        method, p, session = msg.get("method"), msg.get("params", {}), msg.get("sessionId")
        if msg.get("id") in self._replies:  # a response nobody waits for any more is dropped
            self._replies[msg["id"]] = msg
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            prefix = "" if p["type"] == "error" else "Assertion failed: "
            self._errors.append(prefix + " ".join(_text(a) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self._errors.append(_text(p["exceptionDetails"]))
        elif method == "Log.entryAdded" and (entry := p["entry"]).get("level") == "error":
            self._errors.append(entry.get("text", "") + (f" ({entry['url']})" if entry.get("url") else ""))
        elif method == "Page.frameNavigated" and not p["frame"].get("parentId"):
            self._history.setdefault(session, []).append(p["frame"]["loaderId"])
        elif method == "Page.loadEventFired":
            self._history.setdefault(session, []).append("load")

    def _read_output(self) -> None:  # Chromium's stdout and stderr: noise, but its last words if it dies
        self._output.extend(iter(lambda: self._proc.stdout.read1(4096), b""))
