"""Writing files so that a crash never leaves a half-written one under the real name."""

import contextlib
import hashlib
import os
import re
import tempfile
import time


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; on success it is renamed to ``path``
    in one step (``os.replace``), on any error it is removed.

    The temporary name keeps ``path``'s suffixes (``.weights.h5``, ``.keras``)
    because Keras checks them.

    Example:
    >>> with atomic_path("model.weights.h5") as tmp:
    ...     model.save_weights(tmp)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = name[name.index(".") :] if "." in name else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".part{suffix}", dir=folder)
    os.close(fd)
    os.remove(tmp)  # writers (h5py, Keras) want to create the file themselves
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256(path, chunk=1 << 20):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# atomic_path's temporaries: "." + name + "." + mkstemp's 8 random characters + ".part" + suffix.
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.part(?:\..+)?")


def remove_leftovers(folder, min_age=60.0):
    """Removes the temporaries that :func:`atomic_path` leaves in ``folder`` (not its
    sub-folders) when its process is killed, and returns their paths. Ones modified in
    the last ``min_age`` seconds are kept: they may belong to a writer still at work."""
    removed = []
    now = time.time()
    for entry in os.scandir(folder) if os.path.isdir(folder) else []:
        if _LEFTOVER.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):  # another cleaner got there first
                if now - entry.stat().st_mtime >= min_age:
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed
