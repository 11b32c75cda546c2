"""Opening files without following symbolic links: inside an artifact, and beside an output the toolkit writes.

A link planted where the toolkit reads (an artifact's file pointing at an outside copy) or writes (`<out>.lock`
pointing at a file the user owns) would make it read unverified bytes or truncate someone else's file. Every
such open goes through here: `O_NOFOLLOW` on the last component, and for names inside an artifact each directory
component opened relative to its parent's descriptor with `O_NOFOLLOW` too, so no check-then-open race exists.
A link is refused in one line naming it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SymlinkRefused(ValueError):
    pass


def _refuse_link(path, e: OSError) -> None:
    # O_NOFOLLOW on a link gives ELOOP (Linux) or EMLINK (FreeBSD); O_DIRECTORY on a link to a file gives ENOTDIR
    if e.errno in (errno.ELOOP, errno.EMLINK) or (e.errno == errno.ENOTDIR and os.path.islink(path)):
        raise SymlinkRefused(f"{path} is a symbolic link: the toolkit does not follow links there") from None


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """os.open without following a link at `path` itself; -> fd of a regular file (anything else is refused)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as e:
        _refuse_link(path, e)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    return fd


def nofollow_opener(path, flags: int) -> int:
    """For `open(path, mode, opener=nofollow_opener)`: the file object keeps its name, the link is refused."""
    return open_nofollow(path, flags, 0o666)


def check_not_link(path: str | os.PathLike) -> bool:
    """-> whether `path` exists (as anything but a link); a link there is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(f"{path} is a symbolic link: the toolkit does not follow links there")
    return True


def is_regular_file(path: str | os.PathLike) -> bool:
    """Like Path.is_file() but a link is refused instead of followed."""
    return check_not_link(path) and stat.S_ISREG(os.lstat(path).st_mode)


def safe_name(name: object) -> PurePosixPath | None:
    """A relative POSIX name with no '..', no empty or '.' parts and no backslash; None when it is not one."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    p = PurePosixPath(name)
    if not p.parts or p.is_absolute() or any(part in ("..", ".") for part in p.parts) or p.as_posix() != name:
        return None
    return p


def open_inside(root: str | os.PathLike, name: str) -> int:
    """A read-only fd of the regular file `root/name`, reached without following any link below `root`
    (`root` itself is the user's choice and may be one). FileNotFoundError when it is missing."""
    rel = safe_name(name)
    if rel is None:
        raise ValueError(f"{name!r} is not a path inside {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        where = Path(root)
        for part in rel.parts[:-1]:
            where = where / part
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            except OSError as e:
                _refuse_link(where, e)
                raise
            os.close(fd)
            fd = nfd
        try:
            f = os.open(rel.parts[-1], os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
        except OSError as e:
            _refuse_link(Path(root) / name, e)
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(f).st_mode):
        os.close(f)
        raise ValueError(f"{Path(root) / name} is not a regular file")
    return f


def read_inside(root: str | os.PathLike, name: str) -> bytes:
    fd = open_inside(root, name)
    with os.fdopen(fd, "rb") as f:
        return f.read()
