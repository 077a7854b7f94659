"""Keeping the server's memory and logs bounded: log lines capped, freed memory given back.

Memory freed after a burst goes back to the system (glibc's malloc_trim) once the process has run
no batch for TRIM_INTERVAL seconds; without it a process that once decoded large requests keeps its
peak size. While batches run, nothing is trimmed: the next batch would take the pages again.

Everything here is per process (MLServer's inference workers call it when they load the model) and
idempotent. No mlserver import here."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import traceback
from typing import Any, Dict, Optional

#: the longest log line (message and traceback together) any handler writes; a request body
#: never reaches a log through an error message (a 100 MB body once made one 301 MB line)
MAX_LOG_LINE = 4000
#: seconds without a batch after which freed memory goes back to the system
TRIM_INTERVAL = 1.0
_STATE: Dict[str, Any] = {}


class CapLogLines(logging.Filter):
    """Cuts each record's message and traceback to MAX_LOG_LINE characters, drops the traceback of
    a refused request (MLServer logs one for every error it answers, 4xx included: a client could
    fill the log with them) and the records of tasks cancelled at shutdown (Ctrl-C is no error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        # a task cancelled as the server stops (Starlette hands uvicorn its traceback as a message)
        if isinstance(error, asyncio.CancelledError) or (
            message.startswith("Traceback") and message.rstrip().endswith("CancelledError")
        ):
            return False
        if error is not None and getattr(error, "status_code", 500) < 500:
            record.exc_info, record.exc_text = None, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
        record.exc_info = None
        if record.exc_text and len(record.exc_text) > MAX_LOG_LINE:
            record.exc_text = record.exc_text[:MAX_LOG_LINE] + " [cut]"
        if len(message) > MAX_LOG_LINE:
            message = message[:MAX_LOG_LINE] + f" [cut: {len(message)} characters]"
        record.msg, record.args = message, None
        return True


def cap_log_lines() -> None:
    """Put CapLogLines on every handler of every logger this process has now."""
    cap = _STATE.setdefault("filter", CapLogLines())
    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if cap not in handler.filters:
                handler.addFilter(cap)


def libc() -> Optional[Any]:
    """glibc through ctypes, or None where the C library has no malloc_trim (musl, macOS)."""
    if "libc" not in _STATE:
        name = ctypes.util.find_library("c")
        found: Optional[Any] = ctypes.CDLL(name) if name else None
        _STATE["libc"] = found if found is not None and hasattr(found, "malloc_trim") else None
    return _STATE["libc"]


def note_batch() -> None:
    """Record that a batch ran: the trimmer waits until the process is idle."""
    _STATE["busy"] = True


def malloc_trim() -> bool:
    """Give the memory freed since the last call back to the system (glibc's malloc_trim; False
    where the C library has none)."""
    c = libc()
    if c is None:
        return False
    c.malloc_trim(0)
    return True


def start_memory_trimmer() -> None:
    """On the running event loop, give freed memory back (malloc_trim) every TRIM_INTERVAL seconds
    in which no batch ran, and cap the log lines of handlers made since (once per process)."""
    if _STATE.get("trimmer") is not None and not _STATE["trimmer"].done():
        return

    async def trim_forever() -> None:
        while True:
            cap_log_lines()  # uvicorn makes its handlers when its servers start
            if not _STATE.pop("busy", False) and not malloc_trim():
                return
            await asyncio.sleep(TRIM_INTERVAL)

    _STATE["trimmer"] = asyncio.get_running_loop().create_task(trim_forever())
