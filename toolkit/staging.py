"""Writing an artifact without ever leaving a broken one: a staging directory beside it, swapped in atomically.

Every writer (export, calibrate, bf16, threshold) builds the new artifact in `.<name>.staging-<pid>-<random>/`
beside the final directory: files it keeps are hard links to the current ones (no copy, same bytes), new files
are written there, the manifest last. `commit()` then exchanges the two directories in one `renameat2(
RENAME_EXCHANGE)` (Linux), so a reader sees the old artifact or the new one, never a mix; the old one is deleted.
A process killed at any moment leaves the artifact as it was plus a staging directory, which the next writer for
the same artifact removes once no live process owns it (an flock held inside it; the kernel drops it at death).
Temporary files of libraries (onnxruntime's calibration model) go to `tmp/` inside the staging directory, so
they are removed with it. One writer per artifact at a time: `.<name>.lock` beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

from toolkit.io import umask
from toolkit.locks import exclusive_lock
from toolkit.safe_paths import open_nofollow

OWNER = ".owner"


def _prefixes(final: Path) -> tuple[str, str]:
    return f".{final.name}.staging-", f".{final.name}.old-"


def _owner_alive(d: Path) -> bool:
    """Whether a live process owns staging directory `d` (holds the flock on its .owner file)."""
    try:
        fd = open_nofollow(d / OWNER, os.O_RDONLY)
    except FileNotFoundError:
        pid = d.name.rsplit("-", 2)[-2] if d.name.count("-") >= 2 else ""
        return pid.isdigit() and _pid_alive(int(pid))  # killed before it took the lock: judged by its pid
    except (OSError, ValueError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(final: Path, log=lambda msg: None) -> list[Path]:
    """Remove the staging (and half-swapped old) directories of `final` that no live process owns; -> removed."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in os.scandir(final.parent):
        if not entry.name.startswith(_prefixes(final)) or not entry.is_dir(follow_symlinks=False):
            continue
        d = Path(entry.path)
        if not _owner_alive(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log(f"removed {d}: left by a process that was killed")
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


class Staging:
    """`with Staging(final) as st:` build the new artifact in `st.dir`, then `st.commit()`; without a commit (an
    error, Ctrl-C) the staging directory is removed and `final` is untouched."""

    def __init__(self, final: str | os.PathLike, carry_dirs: tuple[str, ...] = (), log=lambda msg: None):
        self.final = Path(final)
        self.carry_dirs = carry_dirs  # unlisted directories (plan cache, reports) moved over from the old artifact
        self.log = log
        self.dir: Path | None = None
        self._lock = exclusive_lock(self.final.parent / f".{self.final.name}.lock", str(self.final))
        self._owner_fd: int | None = None
        self._stack = contextlib.ExitStack()
        self.committed = False

    def __enter__(self) -> Staging:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            remove_stale(self.final, self.log)
            prefix = f"{_prefixes(self.final)[0]}{os.getpid()}-"
            self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.final.parent))
            os.chmod(self.dir, 0o777 & ~umask())
            self._owner_fd = open_nofollow(self.dir / OWNER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp = self.dir / "tmp"
            tmp.mkdir()
            self._stack.enter_context(_tempdir(tmp))
        except BaseException:
            self._cleanup()
            raise
        return self

    def link(self, src_dir: Path, name: str) -> None:
        """Carry file `name` of `src_dir` into the staging directory (a hard link; a copy where links fail)."""
        dst = self.dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = src_dir / name
        if stat.S_ISLNK(os.lstat(src).st_mode):
            raise ValueError(f"{src} is a symbolic link: the toolkit does not follow links inside an artifact")
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    def commit(self) -> Path:
        """Swap the staging directory in for `final` (atomically where the system allows); -> final."""
        self._stack.close()  # library temporaries end with the staging contents they produced
        (self.dir / OWNER).unlink()  # still locked through its fd; judged by the pid in the name meanwhile
        shutil.rmtree(self.dir / "tmp")
        if self.final.exists():
            for sub in self.carry_dirs:
                src = self.final / sub
                if src.is_dir() and not src.is_symlink():
                    os.replace(src, self.dir / sub)
            if _exchange(self.dir, self.final):
                old = self.dir  # the old artifact now sits at the staging path
            else:
                old = self.final.with_name(f"{_prefixes(self.final)[1]}{os.getpid()}-{os.urandom(4).hex()}")
                os.replace(self.final, old)
                os.replace(self.dir, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.dir, self.final)
        self.committed = True
        return self.final

    def _cleanup(self) -> None:
        self._stack.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None
        if self.dir is not None and not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._lock.__exit__()

    def __exit__(self, *exc) -> None:
        self._cleanup()


@contextlib.contextmanager
def _tempdir(path: Path):
    """This process's tempfile default directory under `path` while staging (child processes keep theirs)."""
    import multiprocessing.util

    multiprocessing.util.get_temp_dir()  # created (and cached) where it belongs before the default moves
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = old
