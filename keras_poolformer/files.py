"""Writing files so that a crash never leaves a half-written one under the real name."""

import contextlib
import hashlib
import os
import tempfile


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
