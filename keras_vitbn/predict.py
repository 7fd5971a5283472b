"""Classify image files with a saved model, on any backend.

    python -m keras_vitbn.predict runs/mnist/.../model_best.keras digit.png photo.jpg
    python -m keras_vitbn.predict model.keras digit.png --top 3 --json

PNG/JPEG (anything Pillow decodes), grey or colour, any size: each image is
converted to the model's channels and resized to its input size, and the
output says what was done. For one-channel models, images whose border is
bright (dark ink on white paper) are inverted to the MNIST convention of a light
figure on black (`--invert auto`, the default).

Each bad input (missing or corrupt model, missing or undecodable image) gives
one error line; the exit status is then non-zero.
"""

import argparse
import json
import os
import sys
import zipfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a command line: keep TensorFlow's C++ log lines out of it

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
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
    import keras

    import keras_vitbn  # noqa: F401  (registers the custom layers)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # zip, JSON, h5 and config errors alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot load model {path}: not a valid .keras model ({type(error).__name__}: {first[:200]})")
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


def load_image(path, height, width, channels, invert="auto"):
    """Decodes an image file (a path or a binary file object) into a (height, width, channels) float32 array in [0, 1].

    Returns (array, notes): notes say what was converted.
    """
    from PIL import Image, UnidentifiedImageError

    is_path = isinstance(path, (str, os.PathLike))
    name = path if is_path else getattr(path, "name", "upload")  # file objects: keras_vitbn.serve's uploads
    if is_path and not os.path.exists(path):
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            original_mode, original_size = image.mode, image.size
            if image.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            target_mode = "L" if channels == 1 else "RGB"
            notes = []
            if image.mode != target_mode:
                image = image.convert(target_mode)
                notes.append(f"converted {original_mode} to {'grey' if channels == 1 else 'RGB'}")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
                notes.append(f"resized {original_size[0]}x{original_size[1]} to {width}x{height}")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot decode image {name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    array = np.asarray(image, np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    if channels == 1 and invert != "never":
        border = np.concatenate([array[0].ravel(), array[-1].ravel(), array[:, 0].ravel(), array[:, -1].ravel()])
        if invert == "always" or border.mean() > 0.5:
            array = 1.0 - array
            notes.append("inverted to a light figure on black" + (" (bright background)" if invert == "auto" else ""))
    return array, notes


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
        results.append({"image": path, "notes": notes})
        batch.append(array)
        where.append(len(results) - 1)
    if batch:
        logits = np.asarray(model.predict(np.stack(batch), verbose=0), np.float64)
        probabilities = softmax(logits)
        names = class_names or [str(i) for i in range(probabilities.shape[-1])]
        for index, p in zip(where, probabilities):
            order = np.argsort(-p)[:top]
            results[index]["top"] = [
                {"class": int(c), "label": names[c], "probability": float(p[c])} for c in order
            ]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_vitbn.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a .keras file written by a trainer")
    parser.add_argument("images", nargs="+", help="PNG/JPEG files")
    parser.add_argument("--top", type=int, default=3, help="how many classes to show (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--class-names", default=None, help="comma-separated names (default: from the run's config.json)")
    parser.add_argument("--invert", default="auto", choices=["auto", "always", "never"],
                        help="for grey models: invert dark-on-light images (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model)
        num_classes = int(model.outputs[0].shape[-1])
        names = class_names_for(args.model, num_classes, args.class_names)
        results = predict_files(model, args.images, top=max(1, min(args.top, num_classes)), class_names=names, invert=args.invert)
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
