"""Atomic file writes: a file either appears whole or not at all.

Every artifact edgekeras writes (.tflite files, reports, resolved configs,
saved models) goes through here. The content is written to a temporary file in
the destination's own directory and moved into place with `os.replace`, which
is atomic on POSIX and Windows when source and destination share a file
system. A conversion that fails halfway, a full disk or a Ctrl-C therefore
leaves the previous file (or nothing) behind, never a truncated one.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile

from edgekeras.errors import EdgekerasError

__all__ = ["DiskFullError", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json", "remove"]


class DiskFullError(EdgekerasError, OSError):
    """A write failed for lack of space; the previous file is untouched."""


def _disk_full(error, path):
    """`error` as a `DiskFullError` naming `path`, if it is ENOSPC/EDQUOT."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            error.errno,
            f"No space left to write {path!r} ({error.strerror or error}). Nothing was changed: the previous "
            f"file, if any, is intact and no partial file was left. Free some space on "
            f"{os.path.dirname(os.path.abspath(path))!r} or write elsewhere (e.g. run.output_dir), then run the "
            "same command again",
        )
    return None


def _temporary_name(path, directory):
    base = os.path.basename(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return temporary


def remove(path):
    """Deletes a file, a link (not what it points to) or a directory tree, if it exists.

    A directory that cannot be deleted entirely is left partly deleted rather
    than raising: callers use this to clear temporary or replaced artifacts.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path, *, directory=False):
    """Yields a temporary path that replaces `path` when the block succeeds.

    For writers that insist on a path of their own (Keras `model.save`, the
    TFLite interpreter's file loader, `tf.saved_model.save`). The temporary
    path lies beside `path`; if the block raises, it is removed and `path` is
    left untouched.

    Args:
        path: the final destination.
        directory: the writer creates a directory (a SavedModel) rather than
            a file. An existing directory at `path` is replaced whole.

    Yields:
        The temporary path to write to. It keeps `path`'s extension, because
        Keras chooses the save format from it.

    Example:

    ```python
    with atomic_path("runs/demo/model.h5") as temporary:
        model.save(temporary)
    ```
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(path))
    temporary = tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=parent)
    os.rmdir(temporary)
    temporary += extension
    try:
        yield temporary
        if not os.path.lexists(temporary):
            raise FileNotFoundError(f"Nothing was written to the temporary path for {path!r}.")
        if directory and os.path.isdir(path):
            # os.replace cannot replace a non-empty directory: move the old
            # one aside first so there is never a moment with a half copy.
            old = temporary + ".old"
            os.replace(path, old)
            os.replace(temporary, path)
            remove(old)
        else:
            os.replace(temporary, path)
    except BaseException as error:
        remove(temporary)
        full = _disk_full(error, path)
        if full is not None:
            raise full from error
        raise


def atomic_write_bytes(path, data):
    """Writes `data` to `path` atomically and returns `path`.

    Args:
        path: destination file. Its directory is created if needed.
        data: the bytes to write.

    Returns:
        `path` as a string.

    Example:

    ```python
    atomic_write_bytes("model.tflite", converter.convert())
    ```
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = _temporary_name(path, directory)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        remove(temporary)
        full = _disk_full(error, path)
        if full is not None:
            raise full from error
        raise
    return path


def atomic_write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically and returns `path`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    """Writes `obj` as indented JSON to `path` atomically and returns `path`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path, default=None):
    """The JSON value stored at `path`, or `default` when it is missing or unreadable.

    For files edgekeras wrote itself (state, results, reports): a file that
    cannot be read is treated as absent, and the caller redoes what it records.
    Use `json.load` directly where a broken file must be an error.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default
