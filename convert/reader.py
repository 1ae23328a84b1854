"""Reading PoolFormer checkpoints into numpy, without torch and without running their code.

Formats:

- PyTorch ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin`` in the zip format every torch
  since 1.6 writes: a pickle (``<prefix>/data.pkl``) whose tensors point at raw
  storages (``<prefix>/data/<key>``). The pickle is read by :class:`RestrictedUnpickler`,
  which resolves only the handful of globals a state dict is made of, each to a
  function of ours; any other global (``os.system``, ``builtins.eval``...) stops the
  read before anything is called.
- ``.safetensors`` through the safetensors package's numpy API.
- ``.npz`` with ``allow_pickle=False``.
- A Hugging Face model folder: ``config.json`` with ``model.safetensors`` or
  ``pytorch_model.bin``.

Training checkpoints that wrap the state dict (``{"state_dict": ...}``,
``{"model": ...}``) are unwrapped, and DDP's ``module.`` prefix is removed.
"""

import json
import os
import pickle
import zipfile

import numpy as np

PICKLE_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt")
SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors", ".npz")

# Keys under which training scripts store the weights, most wanted first.
WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle asks for something a state dict never needs."""


def _storage_dtypes():
    import ml_dtypes  # ships with TensorFlow and Keras

    return {
        "DoubleStorage": np.float64,
        "FloatStorage": np.float32,
        "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
    }


class _StorageType:
    """Stands for ``torch.FloatStorage`` and friends: only its dtype is kept."""

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class _Inert:
    """Stands for metadata objects of training checkpoints (``argparse.Namespace``,
    numpy scalars): built from any arguments and state, and keeps nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as pickles of numpy scalars use it: str -> bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("unexpected arguments to _codecs.encode in the pickle")
    return text.encode("latin-1")


def _as_strided_copy(storage, offset, size, stride):
    """The tensor a (storage, offset, size, stride) view describes, bounds-checked
    so that no crafted stride reads outside the storage."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)) or offset < 0:
        raise ValueError(f"invalid tensor view: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise ValueError(
            f"tensor view (size {size}, stride {stride}, offset {offset}) runs past its "
            f"storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # contiguous copy, owning its memory


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, *args):
    return _as_strided_copy(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint's ``data.pkl`` into numpy arrays.

    ``find_class`` answers only the globals below, each with a function or class
    of this module; everything else raises :class:`UnsafeCheckpointError` before
    it could be called. ``persistent_load`` reads raw storages from the zip.
    """

    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages = {}
        self._dtypes = _storage_dtypes()

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in self._dtypes:
            return _StorageType(name, self._dtypes[name])
        if (module, name) in {
            ("argparse", "Namespace"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "dtype"),
        }:
            return _Inert
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise UnsafeCheckpointError(
            f"the checkpoint's pickle asks for '{module}.{name}', which a state dict never "
            "needs; refusing to load it (nothing in it was run)."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id in the pickle: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type in the pickle: {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            dtype = np.dtype(storage_type.dtype).newbyteorder(
                "<" if self._byteorder == "little" else ">"
            )
            array = np.frombuffer(raw, dtype=dtype)
            if array.size < int(numel):
                raise ValueError(f"storage {key} holds {array.size} elements, not {numel}")
            self._storages[key] = array.astype(array.dtype.newbyteorder("="))
        return self._storages[key]


def read_torch_zip(path):
    """Reads a torch zip-format checkpoint into nested dicts / lists of numpy arrays."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"'{path}' is not a PyTorch zip checkpoint (torch >= 1.6 format). Old-format "
            "files can be re-saved with torch.save(torch.load(f, weights_only=True), new_f)."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"'{path}' holds {len(pickles)} data.pkl files, expected one.")
        prefix = pickles[0][: -len("/data.pkl")]
        names = set(archive.namelist())
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
        with archive.open(pickles[0]) as file:
            try:
                return RestrictedUnpickler(file, archive, prefix, byteorder).load()
            except (pickle.UnpicklingError, EOFError, KeyError) as error:
                raise ValueError(f"'{path}' is not a readable checkpoint: {error}") from None


def _unwrap(obj, path):
    """The flat ``{key: array}`` state dict inside what a checkpoint file holds."""
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict.")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            return _unwrap(obj[key], path)
    state = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            state[key] = value
    if not state:
        raise ValueError(f"'{path}' holds no tensors (keys: {sorted(obj)[:10]}).")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _hf_folder(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"'{path}' is a folder without config.json: not a Hugging Face model.")
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type not in (None, "poolformer"):
        raise ValueError(f"'{path}' holds a '{model_type}' model, not a PoolFormer.")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ValueError(f"'{path}' has neither model.safetensors nor pytorch_model.bin.")


def read_checkpoint(path):
    """Reads any supported checkpoint into a flat ``{key: numpy array}`` state dict.

    Floating tensors are returned as float32 (half and bfloat16 are widened).
    Keys are as in the file (after unwrapping); renaming them to the official
    layout is :func:`keras_poolformer.convert.layouts.to_official`'s job.

    Raises:
        ValueError: the file is missing, of an unknown kind, damaged, or holds no
            state dict; :class:`UnsafeCheckpointError` (a ``ValueError``) when its
            pickle names a global outside the state-dict set.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _hf_folder(path)
    elif not os.path.isfile(path):
        raise ValueError(f"checkpoint '{path}' does not exist.")

    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            obj = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"'{path}' is not a readable safetensors file: {error}") from None
    elif path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                obj = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"'{path}' is not a readable .npz file: {error}") from None
    elif path.endswith(PICKLE_SUFFIXES):
        obj = read_torch_zip(path)
    else:
        raise ValueError(
            f"'{path}': unknown checkpoint kind; expected one of {', '.join(SUFFIXES)}, "
            "or a Hugging Face model folder."
        )
    state = _unwrap(obj, path)
    return {
        key: value.astype(np.float32)
        if value.dtype.kind == "f" or value.dtype.name == "bfloat16"
        else value
        for key, value in state.items()
    }
