"""Hostile and malformed checkpoints: every one ends in CheckpointError naming the file
(and the tensor, where there is one), with memory bounded near a plain checkpoint read.

Every hostile file is written here, byte by byte: pickles from opcodes, zips with
zipfile or, where a test must lie in a zip's directory, by hand.
"""

import io
import json
import re
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from conftest import TINY

import keras_poolformer as kp
from keras_poolformer.convert import (
    CheckpointError,
    UnsafeCheckpointError,
    convert_checkpoint,
    load_official,
    read_checkpoint,
)

# --- writing pickles and zips by hand --------------------------------------------------


def _int(n):
    """LONG1: an integer of any size."""
    raw = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _dims(dims):
    return dims if isinstance(dims, bytes) else _tuple(*map(_int, dims))


def _tensor(storage, numel, size, stride, offset=0, dtype="FloatStorage", args=None):
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` as
    torch.save writes it; ``size`` / ``stride`` may be raw opcodes, and ``args``
    replaces the argument tuple's items."""
    pid = _tuple(_str("storage"), _global("torch", dtype), _str(storage), _str("cpu"), _int(numel))
    if args is None:
        args = [
            pid + b"Q",  # BINPERSID
            _int(offset),
            _dims(size),
            _dims(stride),
            b"\x89",  # False
            _global("collections", "OrderedDict") + b")R",
        ]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(*args) + b"R"


def _state_pickle(entries):
    """A protocol-2 pickle of ``{key: object}`` from each object's opcodes."""
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u."


def _torch_zip(path, pickle_bytes, storages=(), compress_type=zipfile.ZIP_STORED):
    """A torch zip checkpoint: ``archive/data.pkl`` and ``archive/data/<key>``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, raw in dict(storages).items():
            archive.writestr(f"archive/data/{key}", raw, compress_type=compress_type)
    return path


def _raw_zip(path, entries):
    """A zip written field by field from ``(name, payload, method, crc, file_size)``:
    the sizes and CRC are written as given, so that a test can make them lie."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size in entries:
        name = name.encode()
        offset = len(body)
        fields = (method, 0, 0, crc, len(payload), size, len(name), 0)
        body += struct.pack("<IHH" + "HHHIIIHH", 0x04034B50, 20, 0, *fields) + name + payload
        central += struct.pack(
            "<IHHH" + "HHHIIIHH" + "HHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, offset
        )
        central += name
    n = len(entries)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def _deflated_zeros(nbytes):
    """A raw deflate stream of ``nbytes`` zeros (a multiple of 16 MiB), and its CRC.
    Each 16 MiB block is compressed after a full flush, so every block is the same
    bytes: the 1 GiB stream is built in a fraction of a second."""
    chunk = bytes(2**24)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = nbytes // len(chunk)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    return block * count + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def _safetensors(path, header, data=b"", length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _npz_member(shape, descr="<f4", data=b""):
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def plain_s12(path):
    """A PoolFormer-S12 checkpoint (random weights) in torch's zip format."""
    config = kp.MODEL_CONFIGS["s12"]
    shapes = kp.porting.official_shapes(config["depths"], config["dims"])
    rng = np.random.default_rng(0)
    entries, storages = {}, {}
    for i, (key, shape) in enumerate(shapes.items()):
        array = rng.standard_normal(shape, dtype=np.float32)
        strides = tuple(s // 4 for s in array.strides)
        entries[key] = _tensor(str(i), array.size, shape, strides)
        storages[str(i)] = array.tobytes()
    return _torch_zip(path, _state_pickle(entries), storages)


# --- the hostile files -----------------------------------------------------------------

GIB = 2**30
DEEP = 100_000


def build_hostile(folder):
    """``{case: (path, tensor key or None, words the message must hold)}``."""
    cases = {}

    def torch_case(name, entries, storages=(), key=None, words="", **kwargs):
        path = _torch_zip(folder / f"{name}.pth", _state_pickle(entries), storages, **kwargs)
        cases[name] = (path, key, words)

    w = "network.0.0.mlp.fc1.weight"  # the tensor the torch cases put their trap in
    sixteen = {"0": bytes(16)}
    # A 4-element storage viewed as 10^9 elements with stride 0 (4 GB as a copy).
    torch_case("stride-0 view", {w: _tensor("0", 4, (10**9,), (0,))}, sixteen, w, "stride-0")
    # 2^15 x 2^15 elements over a 2^16-element storage (4 GiB as a copy).
    torch_case(
        "overlapping view",
        {w: _tensor("0", 2**16, (2**15, 2**15), (1, 1))},
        {"0": bytes(2**18)},
        w,
        "overlapping",
    )
    torch_case("2^60-element view", {w: _tensor("0", 4, (2**60,), (1,))}, sixteen, w, "runs past")
    torch_case(
        "numel beyond the storage bytes",
        {w: _tensor("0", 2**40, (2**40,), (1,))},
        sixteen,
        w,
        "zip entry holds 16 bytes",
    )
    torch_case(
        "bzip2 storage entry",
        {w: _tensor("0", 4, (4,), (1,))},
        sixteen,
        w,
        "compression method",
        compress_type=zipfile.ZIP_BZIP2,
    )
    crc_path = _torch_zip(
        folder / "crc.pth",
        _state_pickle({w: _tensor("0", 4, (4,), (1,))}),
        {"0": b"ABCDEFGHIJKLMNOP"},
    )
    crc_path.write_bytes(crc_path.read_bytes().replace(b"ABCDEFGHIJKLMNOP", b"ABCDEFGHIJKLMNOQ"))
    cases["CRC error"] = (crc_path, w, "Bad CRC-32")

    # A 1 MB zip whose storage entry inflates to 1 GiB: honest sizes, refused by the
    # byte budget; and the same entry with a directory that says 16 bytes.
    bomb, crc = _deflated_zeros(GIB)
    for name, numel, size, words in [
        ("zip bomb (1 MB -> 1 GiB)", GIB // 4, GIB, "more than the"),
        ("lying file_size in the zip directory", 4, 16, "Bad CRC-32"),
    ]:
        pickle_bytes = _state_pickle({w: _tensor("0", numel, (numel,), (1,))})
        path = _raw_zip(
            folder / f"{name.split()[0]}-{numel}.pth",
            [
                ("archive/data.pkl", pickle_bytes, 0, zlib.crc32(pickle_bytes), len(pickle_bytes)),
                ("archive/data/0", bomb, zipfile.ZIP_DEFLATED, crc, size),
            ],
        )
        cases[name] = (path, None if numel > 4 else w, words)

    # Malformed pickle structures.
    rebuild = _global("torch._utils", "_rebuild_tensor_v2")
    malformed = {
        "rebuild with 2 arguments": (rebuild + _tuple(_int(1), _int(2)) + b"R", "2 arguments"),
        "rebuild from an int": (
            _tensor("0", 4, (4,), (1,), args=[_int(0), _int(0), _tuple(), _tuple()]),
            "not from a storage",
        ),
        "size that is an int": (
            _tensor("0", 4, _int(4), _int(1)),
            "invalid tensor view",
        ),
        "OrderedDict from an int": (
            _global("collections", "OrderedDict") + _tuple(_int(1)) + b"R",
            "OrderedDict from arguments",
        ),
        "append to a dict": (b"}" + _int(1) + b"a", "AttributeError"),
    }
    for name, (opcodes, words) in malformed.items():
        key = w if name == "size that is an int" else None
        torch_case(name, {w: opcodes}, sixteen, key, words)

    # Deep nesting: 100k wrappers, and a 100k-deep persistent id.
    wrapped = b"\x80\x02" + (b"}" + _str("state_dict")) * DEEP + b"}" + b"s" * DEEP + b"."
    path = _torch_zip(folder / "deep-wrappers.pth", wrapped)
    cases["100k nested wrappers"] = (path, None, "wrapped more than")
    deep_pid = b"\x80\x02" + b"(" * DEEP + b")" + b"t" * DEEP + b"Q."
    path = _torch_zip(folder / "deep-pid.pth", deep_pid)
    cases["100k-deep persistent id"] = (path, None, "persistent id")
    flood = b"\x80\x02(" + b"}" * 1_100_000 + b"l."
    path = _torch_zip(folder / "flood.pth", flood)
    cases["1.1M-opcode pickle"] = (path, None, "opcodes")
    # Just under the opcode cap, the most a pickle can build: a list of ~1M dicts.
    dicts = b"\x80\x02(" + b"}" * 999_990 + b"l."
    path = _torch_zip(folder / "dicts.pth", dicts)
    cases["1M empty dicts (under the opcode cap)"] = (path, None, "holds a list")
    sets = b"\x80\x04\x95\x04\x00\x00\x00\x00\x00\x00\x00\x8f\x8f\x8f."
    path = _torch_zip(folder / "sets.pth", sets)
    cases["set opcodes"] = (path, None, "EMPTY_SET")

    # npz: a header declaring 2^60 elements over 16 bytes, and an object array.
    for name, descr, shape, words in [
        ("npy header of 2^60 elements", "<f4", (2**60,), "holds 16"),
        ("npy object array", "|O", (2,), "only numbers"),
    ]:
        path = folder / f"{name.split()[1]}.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{w}.npy", _npz_member(shape, descr, bytes(16)))
        cases[name] = (path, w, words)

    # safetensors.
    def f32(count, begin, end):
        return {"dtype": "F32", "shape": [count], "data_offsets": [begin, end]}

    for name, header, data, length, key, words in [
        ("safetensors fp8", {w: {**f32(4, 0, 4), "dtype": "F8_E4M3"}}, 4, None, w, "F8_E4M3"),
        ("safetensors unknown dtype", {w: {**f32(4, 0, 4), "dtype": "Q7"}}, 4, None, w, "'Q7'"),
        ("safetensors offsets past the end", {w: f32(2**28, 0, GIB)}, 16, None, w, "offsets"),
        ("safetensors sharing bytes", {w: f32(4, 0, 16), "b": f32(4, 0, 16)}, 16, None, w, "share"),
        ("safetensors huge header length", {}, 0, 2**62, None, "header declares"),
    ]:
        path = _safetensors(folder / f"{len(cases)}.safetensors", header, bytes(data), length)
        cases[name] = (path, key, words)
    # A header at the size cap, of the JSON that builds the most objects per byte.
    path = folder / "objects.safetensors"
    objects = b"[" + b"{}," * ((4 * 2**20 - 2) // 3 - 1) + b"{}]"
    path.write_bytes(struct.pack("<Q", len(objects)) + objects)
    cases["safetensors 4 MiB header of empty objects"] = (path, None, "not an object")
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return build_hostile(tmp_path_factory.mktemp("hostile"))


def test_every_hostile_file_ends_in_our_error_naming_file_and_tensor(hostile):
    for name, (path, key, words) in hostile.items():
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert f"'{path}'" in message, (name, message)
        assert words in message, (name, message)
        if key is not None:
            assert f"'{key}'" in message, (name, message)
        assert len(message) < 600 and "\n" not in message, (name, message)


def test_unsafe_opcodes_are_unsafe_errors(hostile):
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(hostile["set opcodes"][0])


def test_reading_hostile_files_stays_near_a_plain_read_in_memory(hostile, tmp_path):
    """One child process: imports and a plain S12 read set the baseline peak (RSS
    high-water mark), then each hostile file is read; each case must end in our
    error and raise the peak by at most 300 MB."""
    plain = plain_s12(tmp_path / "poolformer_s12.pth")
    paths = {name: str(path) for name, (path, _, _) in hostile.items()}
    script = f"""
import json, resource, sys
from keras_poolformer.convert import CheckpointError, read_checkpoint

def peak():  # MiB; VmHWM starts afresh at exec, ru_maxrss keeps the pytest parent's peak
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

state = read_checkpoint({str(plain)!r})
assert len(state) == 132, len(state)
del state
print(json.dumps({{"case": "baseline", "peak": peak()}}), flush=True)
for name, path in json.loads(sys.argv[1]).items():
    try:
        read_checkpoint(path)
        error = None
    except CheckpointError as e:
        error = type(e).__name__
    print(json.dumps({{"case": name, "peak": peak(), "error": error}}), flush=True)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    baseline = rows[0]["peak"]
    print(f"baseline peak {baseline:.0f} MiB")
    for row in rows[1:]:
        rise = row["peak"] - baseline
        print(f"{row['case']}: +{rise:.0f} MiB ({row['error']})")
        assert row["error"] in ("CheckpointError", "UnsafeCheckpointError"), row
        assert rise <= 300, row
    assert len(rows) == len(paths) + 1


def test_the_hand_written_plain_checkpoint_is_what_torch_reads(tmp_path):
    """The hostile files are built with the same writer: torch reads its plain
    output to the same tensors as we do, so the traps sit in real torch files."""
    torch = pytest.importorskip("torch")
    path = plain_s12(tmp_path / "s12.pth")
    ours = read_checkpoint(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_module_state_dicts_and_odd_dtypes_read_as_torch_does(tmp_path):
    """``torch.save(module.state_dict())`` (an OrderedDict carrying ``_metadata``),
    half / bfloat16 tensors, views; npz in Fortran order, big-endian and compressed;
    safetensors of several dtypes: all read exactly as their own libraries do."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    module.register_buffer("halves", torch.linspace(-1, 1, 5).half())
    module.register_buffer("brain_floats", torch.linspace(-1, 1, 5).bfloat16())
    torch.save(module.state_dict(), tmp_path / "module.pth")
    state = read_checkpoint(tmp_path / "module.pth")
    for key, tensor in module.state_dict().items():
        expected = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        np.testing.assert_array_equal(state[key], expected, err_msg=key)

    rng = np.random.default_rng(0)
    arrays = {
        "fortran": np.asfortranarray(rng.standard_normal((3, 5), dtype=np.float32)),
        "big": rng.standard_normal(7).astype(">f4"),
        "ints": np.arange(6, dtype=np.int64).reshape(2, 3),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float32),
    }
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "a.npz", **arrays)
        state = read_checkpoint(tmp_path / "a.npz")
        for key, array in arrays.items():
            np.testing.assert_array_equal(state[key], array, err_msg=key)
            assert state[key].dtype.isnative
    # (safetensors' numpy writer stores Fortran-order arrays' bytes as if C-ordered.)
    tensors = {k: v for k, v in arrays.items() if k not in ("big", "fortran")}
    tensors["half"] = np.linspace(-1, 1, 4, dtype=np.float16)
    save_file(tensors, str(tmp_path / "a.safetensors"))
    state = read_checkpoint(tmp_path / "a.safetensors")
    for key, array in tensors.items():
        np.testing.assert_array_equal(state[key], array, err_msg=key)


def test_checkpoints_that_read_but_describe_no_architecture_name_file_and_tensor(tmp_path):
    """A 0-d stem or one with no output channels gave IndexError / ZeroDivisionError
    when the architecture was read from it."""
    stem, fc1 = "patch_embed.proj.weight", "network.0.0.mlp.fc1.weight"
    cases = {
        "scalar": ({stem: _tensor("0", 1, (), ())}, bytes(4)),
        "empty": (
            {
                stem: _tensor("0", 0, (0, 3, 7, 7), (147, 49, 7, 1)),
                fc1: _tensor("0", 0, (0, 8, 1, 1), (8, 1, 1, 1)),
            },
            b"",
        ),
    }
    for name, (entries, storage) in cases.items():
        path = _torch_zip(tmp_path / f"{name}.pth", _state_pickle(entries), {"0": storage})
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*{stem} has shape"):
            convert_checkpoint(path, tmp_path / "out.weights.h5")
        assert not (tmp_path / "out.weights.h5").exists()


def test_a_file_without_a_poolformer_layout_is_named(tmp_path):
    pickle_bytes = _state_pickle({"fc.weight": _tensor("0", 1, (1,), (1,))})
    path = _torch_zip(tmp_path / "other.pth", pickle_bytes, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*not a PoolFormer"):
        load_official(path)


def _m36_state():
    """An M36 state dict of zero-strided arrays: the shapes, without the 225 MB."""
    config = kp.MODEL_CONFIGS["m36"]
    shapes = kp.porting.official_shapes(config["depths"], config["dims"])
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def test_another_variant_gives_a_short_error_naming_both(tmp_path, monkeypatch):
    model = kp.PoolFormerS12(weights=None)
    with pytest.raises(ValueError) as info:
        kp.porting.load_state_dict(model, _m36_state())
    lines = str(info.value).splitlines()
    assert len(lines) < 15, lines
    assert "PoolFormer-M36" in lines[0] and "PoolFormer-S12" in lines[0], lines[0]
    assert "of its 372 tensors do not fit" in lines[0], lines[0]

    path = tmp_path / "m36.pth"
    path.write_bytes(b"")  # read through the patched reader below
    monkeypatch.setattr(
        "keras_poolformer.convert.layouts.load_official", lambda p: (_m36_state(), "official")
    )
    with pytest.raises(ValueError) as info:
        kp.PoolFormerS12(weights=path)
    lines = str(info.value).splitlines()
    assert len(lines) < 15, lines
    assert "PoolFormer-M36" in lines[0] and "PoolFormer-S12" in lines[0], lines[0]


def test_a_few_misfits_are_all_listed(tmp_path):
    model = kp.PoolFormer(**TINY, weights=None)
    state = kp.porting.export_state_dict(model)
    for key in list(state)[:5]:
        del state[key]
    with pytest.raises(ValueError, match=r"5 missing\n  missing \(3 of 5\):\n") as info:
        kp.porting.load_state_dict(model, state)
    assert len(str(info.value).splitlines()) == 5
