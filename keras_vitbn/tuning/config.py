"""`SearchConfig`: one learning-rate-per-depth search, as a JSON-able dataclass.

A search is a grid of cells, one per (model, depth); in every cell keras-tuner
searches the learning rate alone, everything else being `train` (a
`TrainConfig` whose `model`, `depth` and `learning_rate` are ignored).

    python tuning/lr_per_depth.py --models vit vit_bnffn --depths 1 2 3 4 --trials 6

`search(config)` writes the resolved config to `<output_dir>/search.json`.
"""

import dataclasses
import math
import os

from keras_vitbn.models import list_models
from keras_vitbn.training.config import TrainConfig

TUNERS = ("bayesian", "random", "grid")


@dataclasses.dataclass
class SearchConfig:
    """A learning-rate search per (model, depth).

    Args:
        train: TrainConfig. Data, augmentation, test protocol, optimizer,
            schedule, batch size and epochs of every trial. Its `model`,
            `depth` and `learning_rate` are ignored; its `validation_split`
            must be positive (the objective is measured on it, never on the
            test split).
        models: tuple of str. `keras_vitbn.list_models()` names. Defaults to
            ("vit", "vit_bnffn").
        depths: tuple of int. Defaults to 1..8.
        tuner: str. "bayesian", "random" or "grid". Defaults to "bayesian".
        lr_min: float. Lower end of the log-uniform range. Defaults to 1e-4.
        lr_max: float. Upper end of the log-uniform range. Defaults to 1e-2.
        lr_grid: tuple of float or None. The grid of the "grid" tuner; None
            means `grid_points` values log-spaced over [lr_min, lr_max].
        grid_points: int. Size of the default grid. Defaults to 5.
        trials: int or None. Trials per (model, depth), failed ones included;
            None means 6, or the whole grid with the "grid" tuner.
        initial_points: int or None. Random trials before Bayesian
            optimisation starts; None means 3 (keras-tuner's 3 per searched
            hyperparameter).
        output_dir: str. Search directory; "" picks runs/tuning/<dataset>.

    Example:
    >>> config = SearchConfig(TrainConfig(dataset="fashion_mnist", validation_split=0.1), depths=(1, 2))
    >>> SearchConfig.from_dict(config.to_dict()) == config
    True
    """

    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(validation_split=0.1))
    models: tuple = ("vit", "vit_bnffn")
    depths: tuple = tuple(range(1, 9))
    tuner: str = "bayesian"
    lr_min: float = 1e-4
    lr_max: float = 1e-2
    lr_grid: tuple | None = None
    grid_points: int = 5
    trials: int | None = None
    initial_points: int | None = None
    output_dir: str = ""

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        self.models = tuple(self.models)
        self.depths = tuple(int(d) for d in self.depths)
        if self.tuner not in TUNERS:
            raise ValueError(f"unknown tuner {self.tuner!r}: choose one of {', '.join(TUNERS)}")
        if not self.models:
            raise ValueError("no models to search: pass at least one model name")
        for name in self.models:
            if name not in list_models():
                raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models {self.models} contain duplicates")
        if not self.depths:
            raise ValueError("no depths to search: pass at least one depth")
        if min(self.depths) < 1 or len(set(self.depths)) != len(self.depths):
            raise ValueError(f"depths {self.depths} must be distinct and at least 1")
        if not 0 < self.lr_min < self.lr_max:
            raise ValueError(f"learning-rate range [{self.lr_min}, {self.lr_max}] must satisfy 0 < min < max")
        if self.lr_grid is not None:
            self.lr_grid = tuple(float(v) for v in self.lr_grid)
            if len(self.lr_grid) < 1 or min(self.lr_grid) <= 0 or len(set(self.lr_grid)) != len(self.lr_grid):
                raise ValueError(f"learning-rate grid {self.lr_grid} must hold distinct positive values")
        if self.grid_points < 1:
            raise ValueError(f"grid points {self.grid_points} must be at least 1")
        if self.trials is not None and int(self.trials) < 1:
            raise ValueError(f"trials {self.trials} must be at least 1")
        if self.initial_points is not None and int(self.initial_points) < 1:
            raise ValueError(f"initial points {self.initial_points} must be at least 1")
        if not self.train.validation_split > 0:
            raise ValueError(
                "the search needs a validation split carved from the training data (the test split is never "
                f"used to choose): validation_split is {self.train.validation_split}, pass e.g. --validation-split 0.1"
            )

    # The learning rates a search may try.
    def grid(self):
        """The "grid" tuner's learning rates, ascending."""
        if self.lr_grid is not None:
            return tuple(sorted(self.lr_grid))
        if self.grid_points == 1:
            return (self.lr_min,)
        lo, hi = math.log10(self.lr_min), math.log10(self.lr_max)
        step = (hi - lo) / (self.grid_points - 1)
        return tuple(float(f"{10 ** (lo + i * step):.6g}") for i in range(self.grid_points))

    def lr_bounds(self):
        """(lowest, highest) learning rate the tuner may try."""
        if self.tuner == "grid":
            grid = self.grid()
            return grid[0], grid[-1]
        return self.lr_min, self.lr_max

    def max_trials(self):
        if self.trials is not None:
            return int(self.trials)
        return len(self.grid()) if self.tuner == "grid" else 6

    def cells(self):
        """(model, depth) pairs in search order: model by model, shallow to deep."""
        return [(model, depth) for model in self.models for depth in self.depths]

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["train"] = self.train.to_dict()
        return values

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown SearchConfig fields: {', '.join(unknown)}")
        values = dict(values)
        if isinstance(values.get("train"), dict):
            values["train"] = TrainConfig.from_dict(values["train"])
        return cls(**values)

    def search_key(self):
        """What trials of a cell depend on: a rerun must agree on it to resume.

        Models, depths, the number of trials and the output directory may change
        between reruns (more cells, more trials); nothing else may.
        """
        values = self.to_dict()
        for key in ("models", "depths", "trials", "output_dir"):
            values.pop(key)
        train = values["train"]
        for key in ("model", "depth", "learning_rate", "output_dir", "mlflow"):
            train.pop(key)
        return values

    def default_output_dir(self):
        return os.path.join("runs", "tuning", self.train.dataset.replace("/", "_"))
