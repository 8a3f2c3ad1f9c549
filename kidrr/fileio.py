"""Atomic file and folder writes: an interrupted write never leaves a half file that looks complete."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile


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


def write_figure(fig, path: str, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def replace_dir_atomic(staging: str, final: str) -> None:
    """Move a fully written staging folder into place; the old folder (if any) goes only after."""
    final = os.path.abspath(final)
    old = None
    if os.path.exists(final):
        old = final + ".old-" + next(tempfile._get_candidate_names())
        os.replace(final, old)
    os.replace(staging, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
