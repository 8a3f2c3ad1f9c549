"""Atomic file and folder writes: an interrupted write never leaves a half file that looks complete."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import shutil
import stat
import tempfile
import time
from typing import Callable, Iterable

from .errors import DataError, KidrrError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, process-wide, and the runtime's
# writers (Gallery.save) may run in several threads at once.
_UMASK = _read_umask()


def write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode instead
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def report_format(path: str):
    """The "format" of a JSON report file; "" for JSON without one; None if not a JSON object."""
    import json
    try:
        with open_regular(path, follow_symlinks=True) as fh:     # a FIFO is not a report: never block on it
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, KidrrError):
        return None
    return data.get("format", "") if isinstance(data, dict) else None


def check_report_path(path: str, what: str, fmt: str | None = None) -> None:
    """Before a long run that ends by writing a JSON report to path: InputError if path is a folder,
    its folder is not writable, or it holds a file that is not an earlier report of this kind (fmt:
    its "format" value; None: any JSON object), which would be overwritten."""
    from .errors import InputError
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; give a file name, e.g. {os.path.join(path, 'report.json')}")
    if os.path.lexists(path):
        found = report_format(path)
        if found is None or (fmt is not None and found != fmt):
            raise InputError(f"{what} {path} exists and is not a {fmt or 'JSON'} report; it was not overwritten. "
                             f"Choose another file name")
    check_writable_folder(os.path.dirname(path), what)


def check_writable_folder(folder: str, what: str) -> None:
    """InputError unless files can be created in folder (made if missing): checked before a long run."""
    from .errors import InputError
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{what}: cannot write in {folder} ({exc.strerror or exc}); choose a writable "
                         f"folder") from exc


def read_text_lines(path: str, what: str, max_bytes: int = 1 << 30) -> list:
    """The UTF-8 lines of a text file (caption, id and name lists), without line ends and without
    trailing blank lines; DataError if it is missing, larger than max_bytes (checked before
    reading) or not UTF-8."""
    from .errors import DataError
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise DataError(f"{what} {path} is {size} bytes, over the {max_bytes} byte limit")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.rstrip("\r\n") for line in fh]
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, "
                        f"one item per line") from None
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not an item
    return lines


def follow_umask(path: str) -> None:
    """Give a file written by a library that makes private files (safetensors: 0600) the usual mode."""
    os.chmod(path, 0o666 & ~_UMASK)


def write_figure(fig, path: str, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def foreign_entries(folder: str, known: Iterable[str]) -> list:
    """Entries of folder that are not in known: what replacing the folder would destroy."""
    known = set(known)
    return sorted(e for e in os.listdir(folder) if e not in known)


OLD_INFIX = ".old-"


def _finish_interrupted_swap(final: str, check_replaceable) -> None:
    """Tidy after a replace_dir_atomic that was killed between its steps.

    Killed between the two renames, `final` is gone and `final.old-XXXX` holds the previous
    version: it is renamed back first, so nothing is lost and the usual check applies to it.
    Killed before the old copy was deleted, `final` and `final.old-XXXX` both exist: the copy is
    removed, but only if it passes the same check a replace would make (kidrr wrote it all).
    """
    parent, name = os.path.split(final)
    try:
        olds = sorted(e.path for e in os.scandir(parent or ".")
                      if e.name.startswith(name + OLD_INFIX) and e.is_dir(follow_symlinks=False))
    except OSError:
        return
    if olds and not os.path.lexists(final):
        os.replace(olds.pop(), final)
    for old in olds:
        try:
            if check_replaceable is not None:
                check_replaceable(old)
        except (KidrrError, OSError):
            continue     # not provably ours: leave it
        shutil.rmtree(old, ignore_errors=True)


def replace_dir_atomic(staging: str, final: str, check_replaceable: Callable[[str], None] | None = None) -> None:
    """Move a fully written staging folder into place; the old folder (if any) goes only after.

    check_replaceable(final) runs right before an existing final folder is replaced and raises if
    that folder holds anything its writer did not create (so --force never deletes user data).
    """
    final = os.path.abspath(final)
    _finish_interrupted_swap(final, check_replaceable)
    old = None
    if os.path.lexists(final):
        if os.path.islink(final) or not os.path.isdir(final):
            raise FileExistsError(f"{final} exists and is not a folder; it was not replaced")
        if check_replaceable is not None:
            check_replaceable(final)
        old = final + OLD_INFIX + next(tempfile._get_candidate_names())
        os.replace(final, old)
    os.replace(staging, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# Staging folders: `<prefix>XXXX/` beside the destination, owned through an flock on the sibling
# `<prefix>XXXX.lock`. The kernel drops the lock when its process dies (even by SIGKILL), so a
# later writer can tell a dead writer's leftovers from a live writer's work without trusting pids.
LOCK_SUFFIX = ".lock"
# A staging folder without a lock file (written by an older kidrr) is only removed once it is
# this old: no export runs that long, and a fresh one may be a writer between mkdir and lock.
UNLOCKED_STALE_SECONDS = 24 * 3600


def _lock_is_free(lock_path: str) -> bool:
    """True if no live process holds the flock on lock_path (the file is left as it was)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing also releases a lock just taken
    return True


def clean_stale_staging(parent: str, prefix: str) -> list:
    """Remove `prefix*` staging folders in parent whose writer is dead; returns what was removed.

    Only folders with kidrr's staging prefix are considered, and only ones no live process holds
    the lock of (or, with no lock file, older than UNLOCKED_STALE_SECONDS).
    """
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or name.endswith(LOCK_SUFFIX) or os.path.islink(path) \
                or not os.path.isdir(path):
            continue
        lock = path + LOCK_SUFFIX
        try:
            if os.path.exists(lock):
                stale = _lock_is_free(lock)
            else:
                stale = now - os.stat(path).st_mtime > UNLOCKED_STALE_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging_dir(parent: str, prefix: str):
    """A new folder in parent to write into, locked by this process while it lives.

    Made with the umask's mode (mkdtemp would make it 0700, unreadable to a service running as
    another user once moved into place). Stale folders of dead writers are cleaned first. On an
    exception the folder is removed; on success the caller has moved it away (replace_dir_atomic).
    """
    clean_stale_staging(parent, prefix)
    fd, lock = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=LOCK_SUFFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the folder exists, so no cleaner sees it unlocked
        path = lock[:-len(LOCK_SUFFIX)]
        os.mkdir(path, 0o777)  # mkdir applies the umask
        try:
            yield path
        finally:  # moved into place on success; anything still here is an unfinished write
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def sha256_file(path) -> str:
    """sha256 of a file, given by path or as an open binary file (read from its start)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return _sha256_fh(path)
    with open(path, "rb") as fh:
        return _sha256_fh(fh)


def _sha256_fh(fh) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


class NotRegularFile(DataError):
    """A path inside a folder kidrr owns is a symlink, FIFO, device or folder instead of a regular file."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, dir_fd: int | None = None, what: str = "a kidrr folder", label: str | None = None,
                 follow_symlinks: bool = False):
    """Open path read-only as a binary file, only if it is a regular file itself.

    A symlink is refused without being followed (O_NOFOLLOW), and a FIFO or device is refused
    after an open that cannot block (O_NONBLOCK) by fstat on the descriptor, so nothing can be
    swapped in between the check and the read. FileNotFoundError passes through (callers retry
    on it); the rest is NotRegularFile naming what was found (label: the path to show, for dir_fd opens).
    follow_symlinks: for files whose content is checked otherwise (a bundle's, by sha256) or that the
    user names: the link is followed, and what it leads to must still be a regular file.
    """
    label = label or path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise FileNotFoundError(label) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(f"{label} is a symbolic link; kidrr reads only regular files inside {what} "
                                 f"(replace the link with the file itself)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{label} is {_kind(st.st_mode)}, not a regular file; kidrr reads only regular "
                                 f"files inside {what} (restore the file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_folder(path: str, dir_fd: int | None = None, what: str = "a kidrr folder") -> int:
    """A descriptor of the folder at path (for dir_fd opens of its files), refusing a symlink or non-folder."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                kind = _kind(os.lstat(path, dir_fd=dir_fd).st_mode)
            except OSError:
                kind = "not a folder"
            raise NotRegularFile(f"{path} is {kind}, not a folder; {what} holds only real folders and regular "
                                 f"files (restore it)") from None
        raise
