"""Classify image files with a saved model, on any backend.

    python -m keras_vitbn.tools.predict runs/mnist/.../model_best.keras digit.png photo.jpg
    python -m keras_vitbn.tools.predict model.keras digit.png --top 3 --json

PNG/JPEG/TIFF/GIF/WebP (anything Pillow decodes), grey or colour, 8 or 16 bits,
with or without transparency, any size up to Pillow's limit (about 89 million
pixels, checked before decoding): each image is converted to the model's
channels and resized to its input size, and the output says what was done. For
one-channel models, images whose border is bright (dark ink on white paper) are
inverted to the MNIST convention of a light figure on black (`--invert auto`).

Each bad input (missing or corrupt model; a missing, undecodable, oversized or
unsupported image) gives one `error:` line on stderr, never a traceback
(`KERAS_VITBN_DEBUG=1` shows it); the other images still get their results.
Exit status: 0 when every image was classified, 1 when any input failed, 2 for
a bad command line.
"""

import argparse
import json
import os
import re
import sys
import warnings
import zipfile

import keras
import numpy as np

import keras_vitbn  # noqa: F401  (registers the custom layers that load_model reads)
from keras_vitbn.utils.cli_errors import ArgumentParser, command, debug

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a command line: keep TensorFlow's C++ log lines out of it

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


class InputError(Exception):
    """A bad input file: reported as one line, exit status 1."""


def load_model(path):
    """Loads a .keras file saved by keras_vitbn, or raises InputError with one clear line."""
    if not os.path.exists(path):
        raise InputError(f"model file {path} does not exist")
    if os.path.isdir(path):
        raise InputError(f"model path {path} is a directory, not a .keras file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"cannot load model {path}: not a .keras file (a .keras file is a zip archive)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # zip, JSON, h5 and config errors alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        kind = type(error).__name__
        raise InputError(f"cannot load model {path}: not a valid .keras model ({kind}: {first[:200]})") from error
    return model


def input_spec(model):
    """(height, width, channels) of a model's image input."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4 or None in shape[1:]:
        raise InputError(f"model input shape {shape} is not a fixed-size NHWC image")
    return tuple(int(s) for s in shape[1:])


def class_names_for(model_path, num_classes, override=None):
    """Class names: given, else from the run's config.json next to the model, else indices."""
    if override:
        names = [n.strip() for n in override.split(",")]
        if len(names) != num_classes:
            raise InputError(f"--class-names has {len(names)} names, the model has {num_classes} classes")
        return names
    config_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    try:
        with open(config_path) as f:
            dataset = json.load(f)["config"]["dataset"]
        names = CLASS_NAMES.get(dataset)
        if names and len(names) == num_classes:
            return names
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [str(i) for i in range(num_classes)]


def load_image(path, height, width, channels, invert="auto", max_pixels=None):
    """Decodes an image file (a path or a binary file object) into a (height, width, channels) float32 array in [0, 1].

    Pixels keep their real range: 8-bit images are divided by 255, 16-bit ones
    (PNG, TIFF) by 65535, float images must already lie in [0, 1]. Palette,
    bilevel, CMYK and YCbCr images are converted to RGB or grey, transparency is
    flattened onto the background that contrasts with the figure, an EXIF
    rotation is applied, and animations give their first frame.

    Args:
        path: str or binary file object.
        height, width, channels: int. The model's input.
        invert: str. "auto", "always" or "never": for one-channel models,
            invert dark-on-light images to a light figure on black. Defaults to "auto".
        max_pixels: int or None. Refuse larger images before decoding them.
            Defaults to Pillow's `Image.MAX_IMAGE_PIXELS` (about 89 million).

    Returns (array, notes): notes say what was converted.
    """
    from PIL import Image, UnidentifiedImageError

    is_path = isinstance(path, (str, os.PathLike))
    name = path if is_path else getattr(path, "name", "upload")  # file objects: keras_vitbn.serve's uploads
    if is_path and not os.path.exists(path):
        raise InputError(f"image {path} does not exist")
    if is_path and os.path.isdir(path):
        raise InputError(f"image {path} is a directory, not an image file")
    limit = int(max_pixels or Image.MAX_IMAGE_PIXELS or 2**62)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit, and decodes the bomb anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size  # from the header: nothing is decoded yet
                if w * h > limit:
                    raise InputError(
                        f"image {name} is {w}x{h} ({w * h:,} pixels), above the limit of {limit:,}: shrink it first"
                    )
                return _decode(image, name, height, width, channels, invert)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own check in Image.open: "Image size (N pixels) exceeds limit of M pixels, ..."
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise InputError(f"image {name} has {pixels}, above the limit of {limit:,}: shrink it first") from None
    except MemoryError:
        raise InputError(f"image {name} is too large to decode in this machine's memory") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise InputError(f"cannot decode image {name}: {_first_line(error)}") from None


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


# Modes Pillow reads 16-bit data into (PNG, TIFF, PGM): values 0..65535.
_MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N")


def _decode(image, name, height, width, channels, invert):
    """The opened image as a (height, width, channels) float32 array in [0, 1], and notes."""
    from PIL import Image

    notes = []
    original_mode, original_size = image.mode, image.size
    image = _load_upright(image, width, height, notes)
    image, scale = _readable_mode(image, name, notes)
    if image.size != (width, height):
        # Pillow resizes RGBA/LA with premultiplied alpha, and F (16-bit data) without rounding to bytes.
        image = image.resize((width, height), Image.BILINEAR)
        notes.append(f"resized {original_size[0]}x{original_size[1]} to {width}x{height}")
    array = np.asarray(image, np.float32) / scale
    if scale == 1.0 and (not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0):
        raise InputError(
            f"image {name} has floating-point pixels outside [0, 1] "
            f"({np.nanmin(array):g} to {np.nanmax(array):g}); scale it to [0, 1] or save it as an 8- or 16-bit image"
        )
    array = _to_channels(array.reshape(height, width, -1), channels, original_mode, notes)
    if channels == 1 and invert != "never":
        array = _light_on_dark(array, invert, notes)
    return np.ascontiguousarray(array, np.float32), notes


def _load_upright(image, width, height, notes):
    """Decodes the first frame, turned upright per its EXIF orientation."""
    from PIL import ImageOps

    frames = getattr(image, "n_frames", 1)
    if image.format == "JPEG":
        image.draft(image.mode, (width, height))  # decode a large photo at 1/2, 1/4 or 1/8 scale: less memory
    image.load()
    if frames > 1:
        notes.append(f"first of {frames} frames")
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation: phones store photos sideways
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append("rotated per its EXIF orientation")
    return image


def _readable_mode(image, name, notes):
    """(image, scale): the image in a mode numpy reads (L, RGB, RGBA, LA or F) and its full-scale value."""
    mode, scale = image.mode, 255.0
    if mode in _MODES_16 or (mode == "I" and image.format == "PNG"):
        image, scale = image.convert("F"), 65535.0
        notes.append("16-bit")
    elif mode == "I":
        bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        if not isinstance(bits, int) or not 1 <= bits <= 32:
            raise InputError(
                f"image {name} has 32-bit integer pixels of unknown range; save it as an 8- or 16-bit image"
            )
        image, scale = image.convert("F"), float(2**bits - 1)
        notes.append(f"{bits}-bit")
    elif mode == "F":
        scale = 1.0
    elif mode in ("1", "L"):
        image = image.convert("L")
    elif mode in ("LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA") if mode != "LA" else image
    elif mode in ("RGBA", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("RGB", "RGBX", "P", "CMYK", "YCbCr", "HSV"):  # not LAB: Pillow copies its channels as RGB
        image = image.convert("RGB")
    else:
        raise InputError(
            f"image {name} has pixel mode {mode}, which is not supported; save it as an RGB or grey PNG or JPEG"
        )
    return image, scale


def _to_channels(array, channels, original_mode, notes):
    """Transparency flattened, then grey or colour as the model takes it."""
    if array.shape[-1] in (2, 4):  # grey or colour with alpha
        colour, alpha = array[..., :-1], array[..., -1:]
        ink = _luma(colour)[..., 0]
        weight = float(alpha.sum())
        # Dark ink on a transparent sheet goes onto white, light ink onto black: the figure stays visible.
        background = 1.0 if weight > 0 and float((ink * alpha[..., 0]).sum()) / weight < 0.5 else 0.0
        array = colour * alpha + background * (1.0 - alpha)
        notes.append(f"flattened transparency onto {'white' if background else 'black'}")
    if array.shape[-1] != channels:
        if channels == 1:
            array = _luma(array)
        elif array.shape[-1] == 1:
            array = np.repeat(array, channels, axis=-1)
        else:
            raise InputError(f"the model takes {channels}-channel images; it cannot be fed a {original_mode} image")
    if (original_mode not in ("L", "1") and channels == 1) or (original_mode != "RGB" and channels == 3):
        notes.append(f"converted {original_mode} to {'grey' if channels == 1 else 'RGB'}")
    return array


def _light_on_dark(array, invert, notes):
    """A grey image inverted when asked to, or ("auto") when its border is bright: MNIST's light figure on black."""
    border = np.concatenate([array[0].ravel(), array[-1].ravel(), array[:, 0].ravel(), array[:, -1].ravel()])
    if invert == "always" or border.mean() > 0.5:
        array = 1.0 - array
        notes.append("inverted to a light figure on black" + (" (bright background)" if invert == "auto" else ""))
    return array


def _luma(rgb):
    """Grey from RGB with ITU-R 601 weights (as Pillow's convert("L")); grey passes through."""
    if rgb.shape[-1] == 1:
        return rgb
    return (rgb[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def predict_files(model, images, top=3, class_names=None, invert="auto"):
    """Top classes of each image file: a list of dicts (with "error" for images that fail)."""
    height, width, channels = input_spec(model)
    results, batch, where = [], [], []
    for path in images:
        try:
            array, notes = load_image(path, height, width, channels, invert)
        except InputError as error:
            results.append({"image": path, "error": str(error)})
            continue
        except Exception as error:  # an unforeseen decoder failure costs this image, not the others' results
            if debug():
                raise
            results.append(
                {"image": path, "error": f"cannot decode image {path}: {type(error).__name__}: {_first_line(error)}"}
            )
            continue
        results.append({"image": path, "notes": notes})
        batch.append(array)
        where.append(len(results) - 1)
    if batch:
        logits = np.asarray(model.predict(np.stack(batch), verbose=0), np.float64)
        probabilities = softmax(logits)
        names = class_names or [str(i) for i in range(probabilities.shape[-1])]
        for index, p in zip(where, probabilities):
            order = np.argsort(-p)[:top]
            results[index]["top"] = [{"class": int(c), "label": names[c], "probability": float(p[c])} for c in order]
    return results


@command(status=1)
def main(argv=None):
    parser = ArgumentParser(
        prog="python -m keras_vitbn.tools.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a .keras file written by a trainer")
    parser.add_argument("images", nargs="+", help="PNG/JPEG files")
    parser.add_argument("--top", type=int, default=3, help="how many classes to show (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--class-names", default=None, help="comma-separated names (default: from the run's config.json)"
    )
    parser.add_argument(
        "--invert",
        default="auto",
        choices=["auto", "always", "never"],
        help="for grey models: invert dark-on-light images (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top {args.top} must be at least 1")
    try:
        model = load_model(args.model)
        num_classes = int(model.outputs[0].shape[-1])
        names = class_names_for(args.model, num_classes, args.class_names)
        results = predict_files(
            model, args.images, top=min(args.top, num_classes), class_names=names, invert=args.invert
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                continue
            done = f" ({', '.join(r['notes'])})" if r["notes"] else ""
            best = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['image']}{done}: {best}")
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
