"""One writer at a time: an flock on a lock file, refused at once when another process holds it.

The kernel drops an flock when its holder dies, so a killed run never blocks the next one; the holder's pid is
written into the file for the message. The lock file is opened without following a link (a link planted at
`<out>.lock` would otherwise be truncated and overwritten), and unlinked by its holder on release.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from toolkit.safe_paths import open_nofollow


class Locked(ValueError):
    """Another process holds the lock (one line: what, which pid, which lock file)."""


# the old name, kept for callers and tests that catch it
OutputLocked = Locked


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path` (created if needed), or None when another process holds it."""
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class exclusive_lock:
    """flock on `path` (created if needed), refused at once when another process holds it."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = try_lock(self.path)
            if fd is None:
                holder = "?"
                try:
                    rfd = open_nofollow(self.path, os.O_RDONLY)
                    holder = os.read(rfd, 64).decode(errors="replace").strip() or "?"
                    os.close(rfd)
                except (OSError, ValueError):
                    pass
                raise Locked(
                    f"{self.what} is being written by another run (pid {holder}, lock {self.path}); "
                    "wait for it to finish or choose another --out"
                )
            # the holder before us may have unlinked the lock file while we waited: lock the current one
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it (see the inode check above)
            os.close(self.fd)
            self.fd = None
