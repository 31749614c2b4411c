"""The core's log lines, through Python's logging: logger ``pccl_arrays``.

How this works. Core threads never touch Python: they queue their lines in C++. One thread of ours takes them
(waiting without the GIL) and logs each at its level. ``PCCL_ARRAYS_LOG`` (debug, info, warn, error, off; any
case) sets the core's level and this logger's; when it asks for debug or info and the program has configured
no logging, a stderr handler is added so the lines are seen. At interpreter exit the thread is told to stop
before threads are joined, so it never holds the exit up; a forked child starts a drain of its own.
"""

from __future__ import annotations

import logging
import os
import threading

from . import _core

logger = logging.getLogger("pccl_arrays")
_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL + 10}
_stop = threading.Event()


def _drain() -> None:
    while not _stop.is_set():
        for level, text in _core.log_take(0.2):
            logger.log(_LEVELS.get(level, logging.WARNING), text)


def start() -> None:
    """Called once, at import of pccl_arrays."""
    level = _core.log_level()
    if os.environ.get("PCCL_ARRAYS_LOG"):
        logger.setLevel(_LEVELS[level])
        if level < 2 and not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[pccl_arrays %(levelname)s] %(message)s"))
            logger.addHandler(handler)
    _core.log_attach_drain()
    _start_drain()
    threading._register_atexit(_stop.set)
    os.register_at_fork(after_in_child=_start_drain)


def _start_drain() -> None:
    threading.Thread(target=_drain, name="pccl-arrays-log").start()
