"""keras_vitbn.tools.predict: images of any mode, depth and size, JSON output, one-line errors for bad inputs."""

import json
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vitbn
from keras_vitbn.tools.predict import CLASS_NAMES, InputError, load_image, main
from tests.testing import ROOT


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)  # a module fixture is built before the per-test seeding
    model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
    path = str(out / "model_best.keras")
    model.save(path)
    (out / "config.json").write_text(json.dumps({"config": {"dataset": "fashion_mnist"}}))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    grey = out / "grey.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(grey)
    rgb = out / "photo.jpg"
    Image.fromarray((255 - rng.integers(0, 60, (90, 120, 3))).astype(np.uint8)).save(rgb)
    bad = out / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    return {"grey": str(grey), "rgb": str(rgb), "bad": str(bad)}


def test_text_output(model_path, images, capsys):
    assert main([model_path, images["grey"], images["rgb"], "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(images["rgb"]) and "converted RGB to grey" in lines[1]
    assert "resized 120x90 to 28x28" in lines[1] and "inverted" in lines[1]
    # The names come from the run's config.json (an untrained model: any two of them).
    assert sum(name in lines[0] for name in CLASS_NAMES["fashion_mnist"]) == 2


def test_json_output(model_path, images, capsys):
    assert main([model_path, images["grey"], "--json", "--top", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["image"] == images["grey"] and len(result[0]["top"]) == 3
    probabilities = [t["probability"] for t in result[0]["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def test_bad_inputs_one_line_each(model_path, images, tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert main([model_path, images["grey"], images["bad"], missing]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert "cannot decode image" in errors[0] and "does not exist" in errors[1]
    assert captured.out.startswith(images["grey"])  # the good image is still classified

    not_model = tmp_path / "model.keras"
    not_model.write_bytes(b"not a zip")
    assert main([str(not_model), images["grey"]]) == 1
    assert "not a .keras file" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.keras"), images["grey"]]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_subprocess(model_path, images):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    ok = subprocess.run(
        [sys.executable, "-m", "keras_vitbn.tools.predict", model_path, images["rgb"], "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)[0]["top"]
    bad = subprocess.run(
        [sys.executable, "-m", "keras_vitbn.tools.predict", images["bad"], images["grey"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    # (On the tensorflow backend, TensorFlow's own C++ start-up lines may precede it.)
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        f"error: cannot load model {images['bad']}: not a .keras file (a .keras file is a zip archive)"
    ]


# --- Image files decoded with their real bit depth and range, or refused in one line ---------------------------


def _png(path, array, bit_depth, colour_type):
    """Writes a PNG by hand: Pillow cannot write 16-bit colour, and this pins exactly what the file holds."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    array = np.asarray(array, ">u2" if bit_depth == 16 else np.uint8)
    height, width = array.shape[:2]
    rows = b"".join(b"\0" + array[i].tobytes() for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
        )
    return str(path)


def test_16_bit_grey_png_keeps_its_range(tmp_path, mnist_sample):
    digit = mnist_sample[0][0]  # a real MNIST digit, light on black
    wide = digit.astype(np.uint16) * 257  # the same picture on 0..65535
    path = _png(tmp_path / "digit16.png", wide, 16, 0)
    array, notes = load_image(path, 28, 28, 1, invert="never")
    np.testing.assert_allclose(array[..., 0], digit / 255.0, atol=1e-6)
    assert "16-bit" in notes
    # A dim grey, 6553 of 65535, is 0.1: not clipped to white (255), as a plain 8-bit conversion does.
    dim = _png(tmp_path / "dim16.png", np.full((28, 28), 6553, np.uint16), 16, 0)
    np.testing.assert_allclose(load_image(dim, 28, 28, 1, invert="never")[0], 6553 / 65535, atol=1e-6)


def test_16_bit_rgb_and_grey_alpha_pngs(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    array, _ = load_image(_png(tmp_path / "rgb16.png", rgb, 16, 2), 8, 8, 3)
    np.testing.assert_allclose(array[0, 0], [1.0, 128 / 255, 0.0], atol=1 / 255)
    grey_alpha = np.zeros((8, 8, 2), np.uint16)
    grey_alpha[..., 0] = 65535
    grey_alpha[2:6, 2:6, 1] = 65535  # an opaque white square on a transparent sheet
    array, notes = load_image(_png(tmp_path / "la16.png", grey_alpha, 16, 4), 8, 8, 1, invert="never")
    assert array[3, 3, 0] == pytest.approx(1.0) and array[0, 0, 0] == pytest.approx(0.0)
    assert "flattened transparency onto black" in notes


def test_transparency_goes_onto_the_contrasting_background(tmp_path):
    # Dark ink on a transparent sheet (what drawing programs save): it must not vanish into black.
    ink = np.zeros((28, 28, 4), np.uint8)
    ink[8:20, 12:16, 3] = 255  # black, opaque stroke; the rest fully transparent
    path = tmp_path / "ink.png"
    Image.fromarray(ink, "RGBA").save(path)
    array, notes = load_image(str(path), 28, 28, 1)
    assert "flattened transparency onto white" in notes and any(n.startswith("inverted") for n in notes)
    assert array[10, 13, 0] == pytest.approx(1.0) and array[0, 0, 0] == pytest.approx(0.0)
    # A palette image with a transparent index: the same flattening.
    palette = Image.fromarray(ink[..., 3] // 255, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    array, notes = load_image(str(tmp_path / "palette.png"), 28, 28, 3)
    np.testing.assert_allclose(array[10, 13], [1.0, 0.0, 0.0], atol=1e-6)
    assert "converted P to RGB" in notes


def test_cmyk_bilevel_exif_and_animation(tmp_path):
    cmyk = tmp_path / "red.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(cmyk, quality=95)
    array, notes = load_image(str(cmyk), 16, 16, 3)
    np.testing.assert_allclose(array[8, 8], [1.0, 0.0, 0.0], atol=0.05)
    assert "converted CMYK to RGB" in notes

    bilevel = Image.new("1", (16, 16), 0)
    bilevel.paste(1, (4, 4, 12, 12))
    bilevel.save(tmp_path / "bits.png")
    array, _ = load_image(str(tmp_path / "bits.png"), 16, 16, 1, invert="never")
    assert array[8, 8, 0] == 1.0 and array[0, 0, 0] == 0.0

    tall = Image.new("L", (10, 20), 0)  # stored 10 wide, 20 high, shown rotated by 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6
    tall.save(tmp_path / "rotated.jpg", exif=exif)
    _, notes = load_image(str(tmp_path / "rotated.jpg"), 28, 28, 1)
    assert "rotated per its EXIF orientation" in notes and "resized 10x20 to 28x28" in notes

    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    array, notes = load_image(str(tmp_path / "anim.gif"), 28, 28, 1, invert="never")
    assert "first of 2 frames" in notes and array.max() == 0.0


def test_float_images_in_range_or_refused(tmp_path):
    Image.fromarray(np.full((28, 28), 0.25, np.float32), "F").save(tmp_path / "ok.tif")
    np.testing.assert_allclose(load_image(str(tmp_path / "ok.tif"), 28, 28, 1, invert="never")[0], 0.25)
    Image.fromarray(np.full((28, 28), 300.0, np.float32), "F").save(tmp_path / "hdr.tif")
    with pytest.raises(InputError, match=r"floating-point pixels outside \[0, 1\] \(300 to 300\)"):
        load_image(str(tmp_path / "hdr.tif"), 28, 28, 1)
    Image.new("LAB", (8, 8)).save(tmp_path / "lab.tif")
    with pytest.raises(InputError, match="pixel mode LAB, which is not supported"):
        load_image(str(tmp_path / "lab.tif"), 8, 8, 3)


def _huge_png(path, side):
    """A 300-byte PNG whose header announces side x side pixels (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(side + 1)))
            + chunk(b"IEND", b"")
        )
    return str(path)


def test_oversized_images_refused_before_decoding(tmp_path, images):
    for side in (10_000, 30_000):  # above Pillow's limit, and above twice it (where Pillow itself raises)
        with pytest.raises(InputError, match=f"has {side * side:,} pixels, above the limit of"):
            load_image(_huge_png(tmp_path / f"huge{side}.png", side), 28, 28, 1)
    with pytest.raises(InputError, match=r"is 28x28 \(784 pixels\), above the limit of 700"):
        load_image(images["grey"], 28, 28, 1, max_pixels=700)


def test_one_bad_file_does_not_cost_the_others(model_path, images, tmp_path, capsys):
    huge = _huge_png(tmp_path / "huge.png", 30_000)
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8)).save(lab)
    status = main([model_path, images["grey"], huge, str(lab), images["rgb"], str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert status == 1
    results = {r["image"]: r for r in json.loads(captured.out)}
    assert results[images["grey"]]["top"] and results[images["rgb"]]["top"]
    assert "above the limit" in results[huge]["error"] and "LAB" in results[str(lab)]["error"]
    assert "is a directory" in results[str(tmp_path)]["error"]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)


BAD_INPUTS = [  # (arguments after the model, exit status, what the one stderr line says)
    (["{grey}", "{huge}"], 1, "above the limit"),
    (["{bad}"], 1, "cannot decode image"),
    (["{grey}", "--top", "0"], 2, "--top 0 must be at least 1"),
    ([], 2, "required: images"),
    (["{grey}", "--invert", "sometimes"], 2, "invalid choice"),
    (["{grey}", "--class-names", "a,b"], 1, "--class-names has 2 names"),
]


def _bad_input_args(model_path, images, tmp_path, args):
    files = {**images, "huge": _huge_png(tmp_path / "huge.png", 30_000)}
    return [model_path, *(a.format(**files) for a in args)]


@pytest.mark.parametrize("args,code,message", BAD_INPUTS)
def test_bad_inputs_table(model_path, images, tmp_path, capsys, args, code, message):
    try:
        status = main(_bad_input_args(model_path, images, tmp_path, args))
    except SystemExit as exit:  # argparse
        status = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == code
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.large
@pytest.mark.parametrize("args,code,message", BAD_INPUTS)
def test_bad_inputs_table_through_the_command_line(model_path, images, tmp_path, args, code, message):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command itself must keep TensorFlow's start-up lines out
    command = [sys.executable, "-m", "keras_vitbn.tools.predict", *_bad_input_args(model_path, images, tmp_path, args)]
    run = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == code and "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.stderr[-2000:]


def test_cli_oversized_image_costs_only_itself(model_path, images, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command itself must keep TensorFlow's start-up lines out
    huge = _huge_png(tmp_path / "huge.png", 30_000)
    command = [sys.executable, "-m", "keras_vitbn.tools.predict", model_path, images["grey"], huge, images["bad"]]
    run = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stdout.startswith(images["grey"] + ": ")  # the good image's result is printed
    lines = run.stderr.strip().splitlines()  # nothing else: no start-up logging of the frameworks
    assert len(lines) == 2 and "above the limit" in lines[0] and "cannot decode image" in lines[1], run.stderr[-2000:]


def test_evaluate_checks_idx_labels_against_the_model(tmp_path, mnist_sample_dir, capsys):
    from keras_vitbn.tools import evaluate

    five = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16, num_classes=5)
    path = str(tmp_path / "five.keras")
    five.save(path)
    assert evaluate.main([path, "--data-dir", mnist_sample_dir, "--test-augment", "none"]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "t10k-labels-idx1-ubyte.gz: label" in error
    assert "the model has 5 classes" in error
