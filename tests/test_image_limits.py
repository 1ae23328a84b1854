"""Image limits: hostile images are refused from their headers, by the exported
SavedModel in a TensorFlow-only process (with its peak memory measured), by
``decode_image`` eagerly and in ``tf.data``, by ``load_image`` and by the folder scan;
images within the limits give the same answers as before; exports are readable by
other users.

Every image here is built from bytes by the test: PNGs and JPEGs by TensorFlow's
encoders or by hand (IHDR and zlib-compressed rows), GIFs by a small LZW writer below,
BMPs from their header fields.
"""

import json
import os
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY

import keras_poolformer as kp
from keras_poolformer import export
from keras_poolformer.imagenet import ImageLimits, decode_image, image_problem

# --- building images ---------------------------------------------------------------------


def png(height, width, bit_depth=8, colour_type=2):
    """A valid PNG of zeros, written by hand: rows compressed by zlib in pieces, so a
    12000 x 12000 1-bit image takes 17 KB and no large buffer."""
    channels = {0: 1, 2: 3}[colour_type]
    row = b"\0" + bytes((width * channels * bit_depth + 7) // 8)
    compress = zlib.compressobj(9)
    idat = b"".join(compress.compress(row * 256) for _ in range(height // 256))
    idat += compress.compress(row * (height % 256)) + compress.flush()

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def jpeg_declaring(height, width):
    """A small real JPEG whose start-of-frame marker is patched to declare another size."""
    data = bytearray(tf.io.encode_jpeg(tf.zeros((16, 16, 3), tf.uint8)).numpy())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp(height, width, pixels=None):
    """A 24-bit BMP; a negative height is top-down. ``pixels``: the pixel bytes (by
    default as many as the header declares)."""
    row = (3 * width + 3) // 4 * 4
    if pixels is None:
        pixels = bytes(row * abs(height))
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + header + pixels


def lzw_zeros(count):
    """GIF LZW data (minimum code size 2) for ``count`` pixels of colour 0. A run of one
    colour compresses to strings of length 1, 2, 3, ... (the code for a run of n is
    n + 4), so millions of pixels take a few kilobytes: what makes GIF bombs small."""
    out, bits, filled = bytearray(), 0, 0

    def put(code, width):
        nonlocal bits, filled
        bits |= code << filled
        filled += width
        while filled >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            filled -= 8

    width, next_code, grow_at, longest = 3, 5, 8, 1
    put(4, width)  # clear
    left = count
    while True:
        run = min(longest, left)
        put(0 if run == 1 else run + 4, width)
        left -= run
        next_code += 1
        if next_code == grow_at:
            width, grow_at = width + 1, grow_at * 2
        if left == 0:
            break
        if next_code == 4095:  # the table is full: clear it
            put(4, width)
            width, next_code, grow_at, longest = 3, 5, 8, 1
        else:
            longest = run + 1
    put(5, width)  # end of information
    if filled:
        out.append(bits)
    return bytes(out)


def sub_blocks(data, size=255):
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(bytes([len(p)]) + p for p in pieces) + b"\0"


def gif(screen, frames, data=None):
    """A GIF with a 2-colour global table; ``frames``: (width, height) per frame, each
    all colour 0. ``data``: replaces every frame's LZW data (e.g. b"" for none)."""
    out = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + bytes([90, 60, 30, 0, 0, 0])
    for width, height in frames:
        pixels = lzw_zeros(width * height) if data is None else data
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02"
        out += sub_blocks(pixels)
    return out + b";"


def normal_images():
    """Images within the limits, of every format, with content."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (200, 310, 3), dtype=np.uint8)
    bmp_pixels = rng.integers(0, 256, 3 * 64 * 48, dtype=np.uint8).tobytes()
    return {
        "jpeg": tf.io.encode_jpeg(photo).numpy(),
        "progressive_jpeg": tf.io.encode_jpeg(photo, progressive=True).numpy(),
        "png_rgba": tf.io.encode_png(rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)).numpy(),
        "png_grey": tf.io.encode_png(rng.integers(0, 256, (120, 80, 1), dtype=np.uint8)).numpy(),
        "gif": gif((40, 30), [(40, 30)]),
        "bmp": bmp(-48, 64, bmp_pixels),
        "wide_20_to_1": png(12, 240),
    }


# The images and the other bombs: (bytes, what the refusal names).
HOSTILE = {
    "png_1x2000": (
        lambda: tf.io.encode_png(tf.zeros((1, 2000, 3), tf.uint8)).numpy(),
        "max_aspect_ratio=20",
    ),
    "png_1x20000": (
        lambda: tf.io.encode_png(tf.zeros((1, 20000, 3), tf.uint8)).numpy(),
        "max_side=8192",
    ),
    "png_12000x12000": (lambda: png(12000, 12000, bit_depth=1, colour_type=0), "max_side=8192"),
    "png_8000x8000": (lambda: png(8000, 8000, bit_depth=1, colour_type=0), "max_pixels=16777216"),
    "png_over_aspect_10x300": (lambda: png(10, 300), "max_aspect_ratio=20"),
    "jpeg_declaring_60000x60000": (lambda: jpeg_declaring(60000, 60000), "max_side=8192"),
    "jpeg_declaring_8000x8000": (lambda: jpeg_declaring(8000, 8000), "max_pixels=16777216"),
    "bmp_header_40000x40000": (lambda: bmp(-40000, 40000, pixels=b"\0" * 64), "max_side=8192"),
    "gif_100_frames_of_2048x2048": (lambda: gif((2048, 2048), [(2048, 2048)] * 100), "in all"),
    "gif_frame_8192x4096_on_16x16_screen": (lambda: gif((16, 16), [(8192, 4096)]), "max_pixels"),
    "gif_frame_65535x65535_no_data": (lambda: gif((1, 1), [(65535, 65535)], b""), "max_side"),
    "truncated_png_header": (lambda: b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0", "PNG header"),
    "corrupt_jpeg_header": (lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x01" * 20, "JPEG"),
    "truncated_gif_header": (lambda: b"GIF89a\x10", "GIF header"),
    "truncated_bmp_header": (lambda: b"BM" + b"\0" * 20, "BMP header"),
    "webp": (
        lambda: b"RIFF\x1a\0\0\0WEBPVP8L\x0d\0\0\0\x2f\0\0\0\x10\x07\x10\x11\x11\x88\x88\xfe\x07\0",
        "WebP",
    ),
}

# In a process that has loaded the model and served one image, no request may raise
# the peak resident memory by more than this.
MAX_RISE_MB = 300


def test_the_gif_writer_writes_what_tensorflow_decodes():
    for frames in ([(40, 30)], [(300, 7)], [(64, 64), (10, 80)]):
        image = tf.io.decode_image(gif((64, 64), frames), channels=3, expand_animations=False)
        height = max(h for _, h in frames)
        width = max(w for w, _ in frames)
        assert image.shape == (height, width, 3)  # the canvas: the largest frame sides
        assert np.all(image.numpy()[: frames[0][1], : frames[0][0]] == [90, 60, 30])
    assert len(gif((2048, 2048), [(2048, 2048)])) < 5000  # 4.2 MP in a few KB


# --- the SavedModel in a TensorFlow-only process -----------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return kp.PoolFormer(**TINY, input_shape=(224, 224, 3), classifier_activation=None)


@pytest.fixture(scope="module")
def saved_model(tiny, tmp_path_factory):
    pytest.importorskip("tensorflow_serving")  # the warm-up requests
    return export.export_saved_model(tiny, tmp_path_factory.mktemp("serving") / "tiny")


SERVE_SCRIPT = """
import json, os, resource, sys
import tensorflow as tf

def peak_mb():
    # This process's own peak: VmHWM starts afresh at exec, where ru_maxrss keeps the
    # peak of the pytest process this one was forked from.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

folder = sys.argv[2]
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
def read(name):
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()
normal = [read(n) for n in sorted(os.listdir(folder)) if n.startswith("normal_")]
first = serve(image_bytes=tf.constant(normal))["probabilities"].numpy()
report = {"baseline_mb": peak_mb(), "cases": {}}
for name in sorted(os.listdir(folder)):
    if not name.startswith("hostile_"):
        continue
    try:
        serve(image_bytes=tf.constant([normal[0], read(name)]))
        outcome = "served"
    except tf.errors.InvalidArgumentError as error:
        outcome = "InvalidArgument: " + error.message.replace("\\n", " ")[:600]
    report["cases"][name[len("hostile_"):]] = {"outcome": outcome, "peak_mb": peak_mb()}
again = serve(image_bytes=tf.constant(normal))["probabilities"].numpy()
report["same_answers_after"] = bool(abs(again - first).max() <= 1e-6)
report["keras_poolformer"] = [m for m in sys.modules if m.startswith("keras_poolformer")]
json.dump({"probabilities": first.tolist(), **report}, open(sys.argv[3], "w"))
"""


def serve_in_child(saved_model, images, tmp_path):
    """Runs SERVE_SCRIPT on the images folder in a fresh process; returns its report."""
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, saved_model, str(images), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_serving_refuses_hostile_images_with_bounded_memory(saved_model, tiny, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    normal = normal_images()
    for name, data in normal.items():
        (images / f"normal_{name}").write_bytes(data)
    for name, (build, _) in HOSTILE.items():
        (images / f"hostile_{name}").write_bytes(build())
    report = serve_in_child(saved_model, images, tmp_path)
    assert report["keras_poolformer"] == []
    rises = {}
    for name, (_, names) in HOSTILE.items():
        case = report["cases"][name]
        assert case["outcome"].startswith("InvalidArgument"), (name, case["outcome"])
        assert names in case["outcome"], (name, case["outcome"])
        rises[name] = round(case["peak_mb"] - report["baseline_mb"])
    print(json.dumps({"baseline_mb": round(report["baseline_mb"]), "rise_mb": rises}))
    assert max(rises.values()) <= MAX_RISE_MB, rises
    assert report["same_answers_after"]

    # Images within the limits: the same answers as the transform without limits.
    unlimited = kp.ImageLimits(max_pixels=2**30, max_side=2**16, max_aspect_ratio=1e6)
    decoded = [kp.decode_image(tf.constant(normal[n]), unlimited) for n in sorted(normal)]
    pixels = np.stack([kp.eval_transform(d).numpy() for d in decoded])
    expected = tf.nn.softmax(tiny(pixels)).numpy()
    assert np.abs(np.array(report["probabilities"]) - expected).max() <= 1e-5


def test_a_request_at_the_limits_is_served_with_bounded_memory(saved_model, tmp_path):
    """The largest images accepted: 4096 x 4096 (max_pixels) as PNG and as a
    progressive JPEG, and a 410 x 8192 PNG (max_side, aspect 20)."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "normal_small").write_bytes(
        tf.io.encode_jpeg(tf.zeros((64, 64, 3), tf.uint8)).numpy()
    )
    (images / "hostile_png_4096x4096").write_bytes(png(4096, 4096))
    ramp = tf.range(4096, dtype=tf.int32) % 256
    big = tf.cast(tf.stack(tf.meshgrid(ramp, ramp) + [ramp[:, None] + 0 * ramp], -1), tf.uint8)
    (images / "hostile_progressive_jpeg_4096x4096").write_bytes(
        tf.io.encode_jpeg(big, progressive=True).numpy()
    )
    del big
    (images / "hostile_png_410x8192").write_bytes(png(410, 8192))
    report = serve_in_child(saved_model, images, tmp_path)
    rises = {n: round(c["peak_mb"] - report["baseline_mb"]) for n, c in report["cases"].items()}
    print(json.dumps({"baseline_mb": round(report["baseline_mb"]), "rise_mb": rises}))
    assert all(c["outcome"] == "served" for c in report["cases"].values()), report["cases"]
    assert max(rises.values()) <= MAX_RISE_MB, rises


def test_tighter_serving_limits_refuse_what_the_defaults_accept(tiny):
    image = tf.constant([tf.io.encode_png(tf.zeros((200, 300, 3), tf.uint8)).numpy()])
    default, _ = export.serving_functions(tiny)
    assert default(image)["probabilities"].shape == (1, 1000)
    for limits, name in [
        (ImageLimits(max_pixels=50_000), "max_pixels=50000"),
        (ImageLimits(max_side=256), "max_side=256"),
        (ImageLimits(max_aspect_ratio=1.2), "max_aspect_ratio=1.2"),
    ]:
        tight, _ = export.serving_functions(tiny, image_limits=limits)
        with pytest.raises(tf.errors.InvalidArgumentError, match=name):
            tight(image)


@pytest.mark.parametrize(
    "values",
    [{"max_pixels": 0}, {"max_side": -1}, {"max_side": 2.5}, {"max_aspect_ratio": 0.5}],
)
def test_limits_are_validated(values):
    with pytest.raises(ValueError, match=next(iter(values))):
        ImageLimits(**values)


# --- decode_image, load_image, data pipelines --------------------------------------------


def test_decode_image_checks_limits_eagerly_and_in_tf_data():
    small = tf.io.encode_png(tf.zeros((30, 40, 3), tf.uint8)).numpy()
    wide = tf.io.encode_png(tf.zeros((2, 100, 3), tf.uint8)).numpy()
    assert decode_image(small).shape == (30, 40, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_aspect_ratio=20"):
        decode_image(wide)
    tight = ImageLimits(max_pixels=1000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="30 x 40 pixels .* max_pixels=1000"):
        decode_image(small, tight)

    dataset = tf.data.Dataset.from_tensor_slices([small, small]).map(decode_image)
    assert [image.shape for image in dataset] == [(30, 40, 3)] * 2
    dataset = tf.data.Dataset.from_tensor_slices([small, wide]).map(decode_image)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_aspect_ratio"):
        list(dataset)
    many_scans = tf.io.encode_jpeg(tf.zeros((8, 8, 3), tf.uint8)).numpy() + b"\xff\xda" * 100
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG of 101 scans"):
        decode_image(many_scans)
    in_function = tf.function(lambda data: decode_image(data, tight))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=1000"):
        in_function(tf.constant(small))


def test_a_gif_walk_is_bounded():
    """A GIF made of one-byte blocks is refused once the walk reaches its block budget."""
    limits = ImageLimits(max_pixels=2**16)
    hostile = b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0, 0, 0) + b"!\xfe" + b"\x01x" * 5000
    problem = image_problem(tf.constant(hostile + b"\0;"), limits).numpy().decode()
    assert f"more than {limits.gif_max_blocks} blocks" in problem
    ok = gif((8, 8), [(8, 8)] * 20)
    assert image_problem(tf.constant(ok), limits).numpy() == b""


def test_load_image_names_missing_paths_folders_and_refused_images(tmp_path):
    with pytest.raises(ValueError, match="'.*nothing.png' does not exist"):
        kp.load_image(tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="is a folder"):
        kp.load_image(tmp_path)
    (tmp_path / "wide.png").write_bytes(png(1, 2000))
    with pytest.raises(ValueError, match=r"'.*wide.png' is refused: image of 1 x 2000 pixels"):
        kp.load_image(tmp_path / "wide.png")
    (tmp_path / "ok.png").write_bytes(png(100, 150))
    with pytest.raises(ValueError, match="max_pixels=1000"):
        kp.load_image(tmp_path / "ok.png", limits=ImageLimits(max_pixels=1000))
    assert kp.load_image(tmp_path / "ok.png").shape == (224, 224, 3)


def test_the_folder_scan_skips_images_beyond_the_limits(tmp_path):
    from keras_poolformer.training import data

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(png(32, 40))
    (tmp_path / "a" / "wide.png").write_bytes(png(1, 2000))
    (tmp_path / "b" / "bomb.gif").write_bytes(gif((64, 64), [(64, 64)] * 5000, b"\x01\x00"))
    source = data.folder_source(str(tmp_path), cache_dir=str(tmp_path))
    skipped = sorted(os.path.basename(p) for p in (*source.train.skipped, *source.val.skipped))
    assert skipped == ["bomb.gif", "wide.png"]
    scan = json.loads((tmp_path / "scan_train.json").read_text())
    assert scan["image_limits"]["max_pixels"] == 2**24


# --- permissions ----------------------------------------------------------------------------


def test_exports_are_readable_by_other_users(tmp_path):
    pytest.importorskip("tensorflow_serving")
    pytest.importorskip("tf2onnx")
    model = kp.PoolFormer(**TINY, input_shape=(64, 64, 3), classes=4, classifier_activation=None)
    old = os.umask(0o022)
    try:
        folder = export.export_saved_model(model, tmp_path / "m", class_names=list("abcd"))
        export.export_tflite(model, tmp_path / "m.tflite")
        export.export_onnx(model, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    modes = {}
    for root, folders, names in os.walk(folder):
        for name in [*folders, *names]:
            modes[os.path.join(root, name)] = stat.S_IMODE(
                os.stat(os.path.join(root, name)).st_mode
            )
    modes[folder] = stat.S_IMODE(os.stat(folder).st_mode)
    for path, mode in modes.items():
        assert mode == (0o755 if os.path.isdir(path) else 0o644), (path, oct(mode))
    assert any(p.endswith("saved_model.pb") for p in modes)
    for name in ("m.tflite", "m.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
