"""Typed errors. Every message says what was wrong and what to do about it.

Torch-free on purpose: the runtime raises these too.
"""


class KidrrError(Exception):
    """Base class of every error kidrr raises on purpose."""


class ConfigError(KidrrError, ValueError):
    """A configuration value is invalid or inconsistent."""


class InputError(KidrrError, ValueError):
    """Features, captions or arguments given by the caller are unusable (shape, dtype, NaN, empty...)."""


class UnknownItem(InputError):
    """An id names no live item of the gallery (the service answers 404)."""


class DataError(KidrrError):
    """A data folder is missing files, has the wrong layout, or holds bad values."""


class CheckpointError(KidrrError):
    """A checkpoint is missing files, or its config, weights and vocabulary disagree."""


class BundleError(KidrrError):
    """An exported bundle is missing files, was edited after export, or comes from another version."""


class BackendUnavailable(KidrrError):
    """A backend (tensorrt, onnxruntime-gpu, torch) is not installed or has no device here."""


class ImageError(InputError):
    """An image file cannot be used: corrupt, truncated, not an image, unsupported format or mode, too large.

    `reason` is a short machine-readable tag (corrupt, unsupported-format, too-large, ...) for the
    skip reports of batch indexing; the message says what to do.
    """

    def __init__(self, message: str, reason: str = "unreadable", path: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.path = path


def describe(exc: BaseException) -> str:
    """What a command prints for an error it stops on: a kidrr error's own message; an OSError no
    typed check foresaw (a read-only disk, a path under a file) as "path: reason", not a traceback."""
    if isinstance(exc, OSError) and not isinstance(exc, KidrrError):
        reason = exc.strerror or str(exc)
        return f"{exc.filename}: {reason}" if exc.filename else reason
    return str(exc)
