"""Reading PoolFormer checkpoints into numpy, without torch, without running their code,
and without trusting a single size they declare.

Formats:

- PyTorch ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin`` / ``.ckpt`` in the zip format every
  torch since 1.6 writes: a pickle (``<prefix>/data.pkl``) whose tensors point at raw
  storages (``<prefix>/data/<key>``). The pickle is read by :class:`RestrictedUnpickler`,
  which resolves only the handful of globals a state dict is made of, each to a
  function of ours; any other global (``os.system``, ``builtins.eval``...) stops the
  read before anything is called.
- ``.safetensors``: the 8-byte header length and JSON header are parsed here.
- ``.npz``: each ``.npy`` member's header is parsed with ``numpy.lib.format``; no
  object arrays, no pickles.
- A Hugging Face model folder: ``config.json`` with ``model.safetensors`` or
  ``pytorch_model.bin``.

Bounded memory: a checkpoint is a file from anywhere, so every size it declares is
checked against the file before anything is allocated or inflated. Unpickling builds
tensors lazily (storage, offset, size, stride); once the state dict's keys are known,
every view is checked against its storage (in bounds, no stride-0 or overlapping
views), every storage against its zip entry (``numel * itemsize`` bytes exactly),
and the total against :func:`byte_budget` (8 x the file size + 64 MiB); only then
are storages read, one at a time, each bounded by its checked size. Zip entries must
be stored or deflated (bzip2 / lzma decompress without a bound), the pickle and the
safetensors header are capped in size, and the pickle's opcodes are counted before it
is unpickled. Every malformed input ends in :class:`CheckpointError` naming the file
and, where there is one, the tensor.

Training checkpoints that wrap the state dict (``{"state_dict": ...}``,
``{"model": ...}``) are unwrapped, and DDP's ``module.`` prefix is removed.
"""

import contextlib
import io
import json
import lzma
import math
import os
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib

import numpy as np

PICKLE_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt")
SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors", ".npz")

# Keys under which training scripts store the weights, most wanted first.
WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
MAX_WRAPPER_DEPTH = 8

# What a file may expand to: torch and safetensors store tensors uncompressed (at most
# the file size), np.savez_compressed shrinks trained float weights by ~10%, and
# widening float16 / bfloat16 to float32 doubles them; 8x leaves room for all of
# these at once, and the 64 MiB margin for small, mostly-zero files.
MAX_EXPANSION = 8
EXPANSION_MARGIN = 64 * 2**20
# A PoolFormer-M48 training checkpoint (weights, AdamW state) has a 0.2 MiB pickle of
# 65k opcodes; an opcode builds at most ~100 bytes of objects beyond its own bytes,
# so these caps bound what unpickling can build to about 100 MB.
MAX_PICKLE_BYTES = 8 * 2**20
MAX_PICKLE_OPCODES = 1_000_000
# An S12 safetensors header is 15 KiB; parsed JSON takes up to ~25x its text.
MAX_HEADER_BYTES = 4 * 2**20
MAX_CONFIG_BYTES = 2**20
MAX_NDIM = 32
_INDEX_LIMIT = 2**63
_CHUNK = 2**20

# Pickle opcodes a torch state dict (protocol 2, or a later protocol) is made of.
# Sets, buffers, extension codes and the protocol-0/1 instance opcodes never are.
# fmt: off
_PICKLE_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING",
    "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM",
    "SETITEMS", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "NEWOBJ", "BINPERSID",
))
# fmt: on

# Anything a damaged zip can raise while being listed or read.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    KeyError,
    struct.error,
    OverflowError,
    UnicodeDecodeError,
)


class CheckpointError(ValueError):
    """A checkpoint file is damaged, malformed, or declares more than it holds.

    The message names the file and, where there is one, the tensor.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks for something a state dict never needs."""


def byte_budget(file_size):
    """The most bytes a checkpoint file of ``file_size`` bytes may expand to (entries
    inflated, tensors materialised); see ``MAX_EXPANSION``."""
    return MAX_EXPANSION * file_size + EXPANSION_MARGIN


def _mib(nbytes):
    return f"{nbytes / 2**20:,.1f} MiB"


def _name(key):
    """A key for a message: quoted, and clipped if a hostile file made it long."""
    text = key if len(key) <= 80 else key[:77] + "..."
    return repr(text)


def _kind(obj):
    """What an object from the pickle is, with its article, for a message (never its
    repr: it may be deeply nested or huge)."""
    name = {_LazyTensor: "tensor", _StorageRef: "storage"}.get(type(obj), type(obj).__name__)
    return ("an " if name[:1].lower() in tuple("aeiou") else "a ") + name


def _clip(text, limit=200):
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fill(file, buffer, what):
    """Reads exactly ``len(buffer)`` bytes into ``buffer``, a chunk at a time."""
    view = memoryview(buffer).cast("B")
    pos = 0
    while pos < len(view):
        n = file.readinto(view[pos : pos + _CHUNK])
        if not n:
            raise CheckpointError(f"{what} ends after {pos} of its {len(view)} bytes")
        pos += n


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


def _output_itemsize(dtype):
    """Bytes per element once read: floating tensors are returned as float32."""
    return 4 if dtype.kind == "f" or dtype.name == "bfloat16" else dtype.itemsize


# --- zip members ---------------------------------------------------------------------


@contextlib.contextmanager
def _zip_errors(what):
    """Turns whatever zipfile / zlib raise on a damaged archive into our error."""
    try:
        yield
    except CheckpointError:
        raise
    except _ZIP_ERRORS as error:
        raise CheckpointError(
            f"{what} is damaged ({type(error).__name__}: {_clip(str(error))})"
        ) from None


def _open_zip(path, what):
    with _zip_errors(what):
        return zipfile.ZipFile(path)


def _member(archive, name, what):
    """The ``ZipInfo`` of ``name``, checked by :func:`_check_compression`."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{what}: the zip has no entry '{_clip(name, 100)}'") from None
    _check_compression(info, what)
    return info


def _check_compression(info, what):
    """Refuses entries neither stored nor deflated: zipfile inflates bzip2 and lzma
    without a bound on the output."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(
            f"{what}: zip entry '{_clip(info.filename, 100)}' uses compression method "
            f"{info.compress_type}; only stored and deflated entries are read"
        )


def _read_member(archive, info, what, limit):
    """The bytes of a zip entry whose declared size is at most ``limit``; reading
    stops at the declared size, so a lying header cannot inflate more, and the
    entry's CRC is checked on its last byte."""
    if info.file_size > limit:
        raise CheckpointError(
            f"{what}: zip entry '{_clip(info.filename, 100)}' declares {info.file_size:,} "
            f"bytes, more than the {limit:,} allowed"
        )
    data = bytearray(info.file_size)
    with _zip_errors(what), archive.open(info) as file:
        _fill(file, data, what)
    return data


# --- torch zip checkpoints -----------------------------------------------------------


class _StorageType:
    """Stands for ``torch.FloatStorage`` and friends: only its dtype is kept."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


class _StorageRef:
    """A storage the pickle refers to: its zip key, dtype and element count. Nothing
    is read until every tensor using it has been checked."""

    __slots__ = ("key", "type", "numel")

    def __init__(self, key, storage_type, numel):
        self.key, self.type, self.numel = key, storage_type, numel


class _LazyTensor:
    """A tensor as the pickle describes it: a view (offset, size, stride) of a
    storage, built into an array only after it has been checked."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Inert:
    """Stands for metadata objects of training checkpoints (``argparse.Namespace``,
    numpy scalars and dtypes): built from any arguments and state, keeps nothing."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _OrderedDict(dict):
    """Stands for ``collections.OrderedDict``: built empty, filled by the pickle's
    SETITEMS; the state BUILD gives it (``state_dict()``'s ``_metadata``) is dropped.
    It takes no arguments, so a pickle cannot make it copy a large mapping."""

    def __init__(self, *args):
        if args:
            raise CheckpointError(
                f"the pickle builds an OrderedDict from arguments ({len(args)}); a state "
                "dict's is built empty"
            )

    def __setstate__(self, state):
        pass


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as pickles of numpy scalars use it: a short str -> bytes."""
    if type(text) is not str or len(text) > 64 or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("unexpected arguments to _codecs.encode in the pickle")
    return text.encode("latin-1")


def _rebuild_tensor(*args):
    """``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
    requires_grad, backward_hooks[, metadata])``, as a :class:`_LazyTensor`.

    Only the structure is checked here; the view is checked against its storage
    once the tensor's key is known (:func:`_check_view`)."""
    if not 4 <= len(args) <= 7:
        raise CheckpointError(
            f"a tensor in the pickle is rebuilt from {len(args)} arguments; torch uses 6 or 7"
        )
    storage, offset, size, stride = args[:4]
    if type(storage) is not _StorageRef:
        raise CheckpointError(
            f"a tensor in the pickle is rebuilt from {_kind(storage)}, not from a storage"
        )
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(*args):
    """``torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)``."""
    if not 1 <= len(args) <= 3 or type(args[0]) is not _LazyTensor:
        raise CheckpointError(
            "a parameter in the pickle is rebuilt from "
            + (_kind(args[0]) if args else "nothing")
            + f" and {max(len(args) - 1, 0)} more arguments, not from a tensor"
        )
    return args[0]


def _check_view(offset, size, stride, numel):
    """Checks that a (offset, size, stride) view reads inside a storage of ``numel``
    elements and never reads one element twice (no stride-0 or overlapping dims of
    size > 1), so that it holds at most ``numel`` elements. Returns its element count."""
    for name, dims in (("size", size), ("stride", stride)):
        if type(dims) not in (tuple, list) or len(dims) > MAX_NDIM:
            raise CheckpointError(
                f"invalid tensor view: its {name} is {_kind(dims)}"
                + (f" of {len(dims)} dims" if type(dims) in (tuple, list) else "")
                + f", not a tuple of at most {MAX_NDIM}"
            )
    if len(size) != len(stride):
        raise CheckpointError(
            f"invalid tensor view: size has {len(size)} dims, stride {len(stride)}"
        )
    values = (offset, *size, *stride)
    if not all(type(v) is int and 0 <= v < _INDEX_LIMIT for v in values):
        if all(type(v) is int and abs(v) < _INDEX_LIMIT for v in values):
            detail = f"size {tuple(size)}, stride {tuple(stride)}, offset {offset}"
        else:
            detail = "a size, stride or offset that is not an integer below 2**63"
        raise CheckpointError(f"invalid tensor view: {detail}")
    size, stride = tuple(size), tuple(stride)
    count = math.prod(size)
    if count == 0:
        return 0
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= numel:
        raise CheckpointError(
            f"tensor view (size {size}, stride {stride}, offset {offset}) runs past its "
            f"storage of {numel} elements"
        )
    reach = 0  # the last element the inner dims reach, from the view's first
    for s, n in sorted((s, n) for n, s in zip(size, stride, strict=True) if n > 1):
        if s <= reach:
            kind = "a stride-0 (broadcast)" if s == 0 else "an overlapping"
            raise CheckpointError(
                f"{kind} tensor view (size {size}, stride {stride}) reads elements more "
                "than once; checkpoints hold each element once"
            )
        reach += (n - 1) * s
    return count


def _as_strided_copy(storage, offset, size, stride):
    """The tensor a (storage, offset, size, stride) view describes, as an array that
    owns its memory, after :func:`_check_view`."""
    _check_view(offset, size, stride, storage.size)
    size, stride = tuple(size), tuple(stride)
    if 0 in size:
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # contiguous copy


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint's ``data.pkl`` into nested containers of
    :class:`_LazyTensor`; reads nothing else from the archive.

    ``find_class`` answers only the globals below, each with a function or class
    of this module; everything else raises :class:`UnsafeCheckpointError` before
    it could be called. ``persistent_load`` records which storage a tensor uses.
    """

    def __init__(self, file):
        super().__init__(file)
        self._storages = {}
        self._types = {name: _StorageType(name, d) for name, d in _storage_dtypes().items()}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in self._types:
            return self._types[name]
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
            f"the checkpoint's pickle asks for '{_clip(module, 80)}.{_clip(name, 80)}', which "
            "a state dict never needs; refusing to load it (nothing in it was run)."
        )

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(
                f"unexpected persistent id in the pickle: {_kind(pid)}"
                + (f" of {len(pid)} items" if type(pid) is tuple else "")
                + ", not ('storage', type, key, location, numel)"
            )
        _, storage_type, key, _location, numel = pid
        if type(storage_type) is not _StorageType:
            raise UnsafeCheckpointError(
                f"unexpected storage type in the pickle: {_kind(storage_type)}"
            )
        if type(key) is not str or not 0 < len(key) <= 64:
            raise CheckpointError(f"a storage key in the pickle is {_kind(key)}, not a name")
        if type(numel) is not int or not 0 <= numel < _INDEX_LIMIT:
            raise CheckpointError(f"storage {_name(key)} declares an invalid element count")
        ref = self._storages.setdefault(key, _StorageRef(key, storage_type, numel))
        if ref.type is not storage_type or ref.numel != numel:
            raise CheckpointError(
                f"storage {_name(key)} is declared twice, as {ref.numel} x {ref.type.name} "
                f"and as {numel} x {storage_type.name}"
            )
        return ref


def _scan_pickle(data):
    """Counts the pickle's opcodes and refuses those a state dict never uses, before
    any object is built: unpickling then builds at most ~100 bytes per opcode."""
    count = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            count += 1
            if count > MAX_PICKLE_OPCODES:
                raise CheckpointError(
                    f"its pickle has more than {MAX_PICKLE_OPCODES:,} opcodes (a "
                    "PoolFormer-M48 training checkpoint has 65k)"
                )
            if opcode.name not in _PICKLE_OPCODES:
                raise UnsafeCheckpointError(
                    f"its pickle uses the {opcode.name} opcode, which a state dict never "
                    "needs; refusing to load it (nothing in it was run)."
                )
    except CheckpointError:
        raise
    except Exception as error:  # pickletools.genops on arbitrary bytes
        raise CheckpointError(
            f"its pickle is damaged ({type(error).__name__}: {_clip(str(error))})"
        ) from None


def _unpickle(data):
    _scan_pickle(data)
    try:
        return RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("its pickle is nested too deeply to be a state dict") from None
    except MemoryError:
        raise CheckpointError("its pickle builds more than fits in memory") from None
    except Exception as error:  # only this module's functions run: any error is the file's
        raise CheckpointError(
            f"its pickle is malformed ({type(error).__name__}: {_clip(str(error))})"
        ) from None


def _read_torch_zip(path, file_size):
    """``{key: array}`` of a torch zip-format checkpoint, read with bounded memory."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            "not a PyTorch zip checkpoint (torch >= 1.6 format). Old-format files can be "
            "re-saved with torch.save(torch.load(f, weights_only=True), new_f)."
        )
    with _open_zip(path, "the zip archive") as archive:
        with _zip_errors("the zip archive"):
            names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"it holds {len(pickles)} data.pkl files, expected one")
        prefix = pickles[0][: -len("/data.pkl")]
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            info = _member(archive, f"{prefix}/byteorder", "its byteorder entry")
            raw = _read_member(archive, info, "its byteorder entry", limit=16)
            byteorder = raw.decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"its byteorder entry says {byteorder!r}")
        info = _member(archive, pickles[0], "its pickle")
        obj = _unpickle(_read_member(archive, info, "its pickle", limit=MAX_PICKLE_BYTES))
        tensors = _unwrap(obj, _LazyTensor)
        return _materialise(archive, prefix, tensors, byteorder, file_size)


def _materialise(archive, prefix, tensors, byteorder, file_size):
    """Checks every view, storage and the total against the file, then reads each
    storage once (bounded by its checked size) and copies its tensors out of it."""
    users = {}  # storage key -> [tensor keys]
    out_bytes = 0
    for key, tensor in tensors.items():
        storage = tensor.storage
        try:
            count = _check_view(tensor.offset, tensor.size, tensor.stride, storage.numel)
        except CheckpointError as error:
            raise CheckpointError(f"tensor {_name(key)}: {error}") from None
        out_bytes += count * _output_itemsize(storage.type.dtype)
        users.setdefault(storage.key, []).append(key)
    infos, in_bytes = {}, 0
    for storage_key, keys in users.items():
        storage = tensors[keys[0]].storage
        what = f"tensor {_name(keys[0])}"
        info = _member(archive, f"{prefix}/data/{storage_key}", what)
        nbytes = storage.numel * storage.type.dtype.itemsize
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{what}: its storage {_name(storage_key)} declares {storage.numel:,} "
                f"{storage.type.name} elements ({nbytes:,} bytes), its zip entry holds "
                f"{info.file_size:,} bytes"
            )
        infos[storage_key] = info
        in_bytes += nbytes
    budget = byte_budget(file_size)
    if max(in_bytes, out_bytes) > budget:
        raise CheckpointError(
            f"its tensors declare {_mib(max(in_bytes, out_bytes))}, more than the "
            f"{_mib(budget)} a {_mib(file_size)} file may hold ({MAX_EXPANSION}x its size "
            f"+ {_mib(EXPANSION_MARGIN)})"
        )
    arrays = {}
    for storage_key, keys in users.items():
        dtype = tensors[keys[0]].storage.type.dtype
        what = f"the storage of tensor {_name(keys[0])}"
        raw = _read_member(archive, infos[storage_key], what, limit=infos[storage_key].file_size)
        flat = np.frombuffer(raw, np.uint8)
        if byteorder != sys.byteorder and dtype.itemsize > 1:
            flat = flat.view(f"u{dtype.itemsize}").byteswap().view(np.uint8)
        flat = flat.view(dtype)
        for key in keys:
            t = tensors[key]
            arrays[key] = _as_strided_copy(flat, t.offset, t.size, t.stride)
        del raw, flat
    return {key: arrays[key] for key in tensors}


# --- safetensors ---------------------------------------------------------------------


def _safetensors_dtypes():
    import ml_dtypes

    return {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "BF16": ml_dtypes.bfloat16,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U64": np.uint64,
        "U32": np.uint32,
        "U16": np.uint16,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }


def _read_safetensors(path, file_size):
    """``{key: array}`` of a ``.safetensors`` file: the header is parsed and every
    entry checked (dtype, shape, offsets inside the file, no two tensors sharing
    bytes) before any tensor is read."""
    bad = "not a readable safetensors file"
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{bad}: {len(head)} bytes, shorter than its header length")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{bad}: its header declares {length:,} bytes, more than the "
                f"{MAX_HEADER_BYTES:,} allowed"
            )
        if 8 + length > file_size:
            raise CheckpointError(
                f"{bad}: its header declares {length:,} bytes, past the end of the "
                f"{file_size:,}-byte file"
            )
        try:
            header = json.loads(file.read(length).decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise CheckpointError(f"{bad}: its header is not JSON ({_clip(str(error))})") from None
        if type(header) is not dict:
            raise CheckpointError(f"{bad}: its header is {_kind(header)}, not an object")
        dtypes = _safetensors_dtypes()
        data_size = file_size - 8 - length
        entries = []
        for key, spec in header.items():
            if key == "__metadata__":
                continue
            entries.append((key, *_safetensors_entry(key, spec, dtypes, data_size)))
        entries.sort(key=lambda e: e[3][0])
        for (key_a, *_, (_, end_a)), (key_b, *_, (begin_b, _)) in zip(
            entries, entries[1:], strict=False
        ):
            if begin_b < end_a:
                raise CheckpointError(
                    f"tensors {_name(key_a)} and {_name(key_b)} share bytes of the file"
                )
        out_bytes = sum(math.prod(shape) * _output_itemsize(d) for _, d, shape, _ in entries)
        budget = byte_budget(file_size)
        if out_bytes > budget:
            raise CheckpointError(
                f"its tensors take {_mib(out_bytes)} as float32, more than the {_mib(budget)} "
                f"a {_mib(file_size)} file may hold"
            )
        state = {}
        for key, dtype, shape, (begin, end) in entries:
            buffer = np.empty(end - begin, np.uint8)
            file.seek(8 + length + begin)
            _fill(file, buffer, f"tensor {_name(key)}")
            if sys.byteorder != "little" and dtype.itemsize > 1:  # the file is little-endian
                buffer = buffer.view(f"u{dtype.itemsize}").byteswap().view(np.uint8)
            state[key] = buffer.view(dtype).reshape(shape)
    return state


def _safetensors_entry(key, spec, dtypes, data_size):
    """``(dtype, shape, (begin, end))`` of one header entry, checked."""
    what = f"tensor {_name(key)}"
    if type(spec) is not dict:
        raise CheckpointError(f"{what}: its header entry is {_kind(spec)}, not an object")
    name, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if type(name) is not str or name not in dtypes:
        shown = repr(_clip(name, 40)) if type(name) is str else _kind(name)
        raise CheckpointError(
            f"{what} has dtype {shown}, which this reader does not support (it reads "
            f"{', '.join(dtypes)}; float8 and unknown dtypes are refused)"
        )
    if (
        type(shape) is not list
        or len(shape) > MAX_NDIM
        or not all(type(n) is int and 0 <= n < _INDEX_LIMIT for n in shape)
    ):
        raise CheckpointError(
            f"{what}: its shape is not a list of at most {MAX_NDIM} non-negative integers"
        )
    if (
        type(offsets) is not list
        or len(offsets) != 2
        or not all(type(n) is int for n in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(
            f"{what}: its data_offsets are not [begin, end] inside the {data_size:,} bytes "
            "after the header"
        )
    dtype = np.dtype(dtypes[name])
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{what}: shape {tuple(shape)} of {name} needs {nbytes:,} bytes, its "
            f"data_offsets span {offsets[1] - offsets[0]:,}"
        )
    return dtype, tuple(shape), tuple(offsets)


# --- npz -----------------------------------------------------------------------------


def _read_npz(path, file_size):
    """``{key: array}`` of an ``.npz`` (``np.savez`` / ``np.savez_compressed``): every
    ``.npy`` member's header is parsed and its shape checked against the member's
    declared size, and the declared sizes against :func:`byte_budget`, before any
    array is read."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError("not a readable .npz file (not a zip archive)")
    budget = byte_budget(file_size)
    with _open_zip(path, "not a readable .npz file: the zip archive") as archive:
        with _zip_errors("not a readable .npz file: the zip archive"):
            members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
        declared = sum(info.file_size for info in members)
        if declared > budget:
            raise CheckpointError(
                f"its arrays declare {_mib(declared)}, more than the {_mib(budget)} a "
                f"{_mib(file_size)} file may hold ({MAX_EXPANSION}x its size + "
                f"{_mib(EXPANSION_MARGIN)})"
            )
        state = {}
        for info in members:
            key = info.filename[: -len(".npy")]
            what = f"array {_name(key)}"
            _check_compression(info, what)
            with _zip_errors(what), archive.open(info) as file:
                state[key] = _read_npy(file, info.file_size, what)
    return state


def _read_npy(file, member_size, what):
    """One ``.npy`` member, its header checked before its data is read."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(file)
        else:
            raise CheckpointError(f"{what}: .npy format version {version} is not read")
    except CheckpointError:
        raise
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise CheckpointError(f"{what}: its .npy header is damaged ({_clip(str(error))})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CheckpointError(f"{what} has dtype {_clip(str(dtype), 60)}; only numbers are read")
    if len(shape) > MAX_NDIM or not all(type(n) is int and 0 <= n < _INDEX_LIMIT for n in shape):
        raise CheckpointError(f"{what}: its .npy header declares an invalid shape")
    nbytes = math.prod(shape) * dtype.itemsize
    if member_size - file.tell() != nbytes:
        raise CheckpointError(
            f"{what}: its .npy header declares shape {_clip(str(shape), 80)} of {dtype} "
            f"({nbytes:,} bytes), the member holds {member_size - file.tell():,}"
        )
    buffer = np.empty(nbytes, np.uint8)
    _fill(file, buffer, what)
    array = buffer.view(dtype)
    # Fortran order as numpy writes it: the reversed shape, transposed.
    array = array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


# --- any checkpoint ------------------------------------------------------------------


def _unwrap(obj, tensor_type):
    """The flat ``{key: tensor}`` state dict inside what a checkpoint file holds."""
    for _ in range(MAX_WRAPPER_DEPTH):
        if not isinstance(obj, dict):
            raise CheckpointError(f"it holds {_kind(obj)}, not a state dict")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    else:
        raise CheckpointError(f"its state dict is wrapped more than {MAX_WRAPPER_DEPTH} deep")
    state = {
        key: value
        for key, value in obj.items()
        if type(key) is str and isinstance(value, tensor_type)
    }
    if not state:
        sample = [_name(k) if type(k) is str else _kind(k) for k in list(obj)[:10]]
        raise CheckpointError(f"it holds no tensors (keys: {', '.join(sample) or 'none'})")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _hf_folder(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(
            f"'{path}' is a folder without config.json: not a Hugging Face model."
        )
    with open(config_path, "rb") as f:
        text = f.read(MAX_CONFIG_BYTES + 1)
    try:
        if len(text) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES:,} bytes")
        config = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise CheckpointError(
            f"'{config_path}' is not a readable config ({_clip(str(error))})."
        ) from None
    model_type = config.get("model_type") if type(config) is dict else None
    if type(config) is not dict or model_type not in (None, "poolformer"):
        what = f"a '{_clip(str(model_type), 40)}' model" if type(config) is dict else "no model"
        raise CheckpointError(f"'{path}' holds {what}, not a PoolFormer.")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise CheckpointError(f"'{path}' has neither model.safetensors nor pytorch_model.bin.")


def read_checkpoint(path):
    """Reads any supported checkpoint into a flat ``{key: numpy array}`` state dict.

    Floating tensors are returned as float32 (half and bfloat16 are widened).
    Keys are as in the file (after unwrapping); renaming them to the official
    layout is :func:`keras_poolformer.convert.layouts.to_official`'s job.

    Memory stays within :func:`byte_budget` of the file's size (8x + 64 MiB) for
    tensors, plus bounded metadata: every declared size is checked against the file
    before it is allocated or inflated (see the module docstring).

    Raises:
        CheckpointError: (a ``ValueError``) the file is missing, of an unknown kind,
            damaged, declares more than it holds, or holds no state dict; the message
            names the file and, where there is one, the tensor.
            :class:`UnsafeCheckpointError` (a ``CheckpointError``) when its pickle asks
            for a global or opcode outside the state-dict set.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _hf_folder(path)
    elif not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    if path.endswith(".safetensors"):
        reader = _read_safetensors
    elif path.endswith(".npz"):
        reader = _read_npz
    elif path.endswith(PICKLE_SUFFIXES):
        reader = _read_torch_zip
    else:
        raise CheckpointError(
            f"'{path}': unknown checkpoint kind; expected one of {', '.join(SUFFIXES)}, "
            "or a Hugging Face model folder."
        )
    try:
        state = _unwrap(reader(path, os.path.getsize(path)), np.ndarray)
    except CheckpointError as error:
        raise type(error)(f"cannot read checkpoint '{path}': {error}") from None
    return {
        key: value.astype(np.float32, copy=False)
        if value.dtype.kind == "f" or value.dtype.name == "bfloat16"
        else value
        for key, value in state.items()
    }
