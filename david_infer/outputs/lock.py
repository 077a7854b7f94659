"""One owner at a time: an exclusive `flock` on a file, naming its holder to whoever is refused
(docs/jobs.md#one-run-per-output-folder). Own code rather than the `filelock` package: filelock
4.3.2 keeps the lock file after release (a hidden file left in every output folder) and keeps no
owner to name in a refusal."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import InputError

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_TRIES = 100  # each retry means the holder removed the file while we waited: bounded all the same


class InUse(InputError):
    """The lock is held by another process (named in the message)."""


class OwnerLock:
    """An exclusive lock on `path` for `what` (words for messages: "the output folder out"); `wait`:
    block while another process holds it (else `InUse`). A context manager too."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], what: str, wait: bool = False) -> None:
        self.path, self.what, self.wait = Path(path), what, wait
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock (`flock` on `path`, created if missing) and write the owner into it (PID, host,
        command, start); True once held (idempotent), False where the file system (`ENOLCK`,
        `EOPNOTSUPP`) or Windows cannot lock. InUse when another process holds it and not `wait`.
        The kernel drops a lock when its holder exits, however it exits: the next one takes over."""
        if self._fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return False
        for _ in range(_TRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InputError(f"cannot lock {self.what}: cannot create {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise InUse(self._refusal()) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_LOCKS:
                    return False
                raise InputError(f"cannot lock {self.what} ({self.path}): {exc.strerror}") from None
            try:
                in_place = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                in_place = False
            if in_place:
                self._fd = fd
                self._write_owner()
                return True
            os.close(fd)  # removed by its holder meanwhile: lock the file now in place
        raise InputError(f"cannot lock {self.what}: {self.path} keeps being replaced by another process")

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)  # while still held: a waiter then finds it gone and retries
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def owner(self) -> str:
        """The holder as it wrote itself into the file ("" when unknown)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return f"PID {doc['pid']} on {doc['host']} ({doc['command']}), since {doc['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _refusal(self) -> str:
        owner = self.owner() or "a process that has not written its name yet"
        return (
            f"{self.what} is in use by another run: {owner}; wait for it to finish, or choose another "
            f"(the lock is {self.path}; it is released when that process exits, however it exits)"
        )

    def _write_owner(self) -> None:
        assert self._fd is not None
        doc = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(doc) + "\n").encode(), 0)

    def __enter__(self) -> "OwnerLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
