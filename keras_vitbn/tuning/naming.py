"""Names shared by the search and its report: the objective, the searched hyperparameter, cell folders.

The search (`keras_vitbn.tuning.search`) writes under these names and the
report (`keras_vitbn.tuning.report`) reads them back; both import them from
here, so neither imports the other for them.
"""

OBJECTIVE = "val_accuracy"
LR = "learning_rate"


def say(message):
    """One progress line of the search, tagged and flushed at once (workers' lines interleave)."""
    print(f"[keras_vitbn.tuning] {message}", flush=True)


def cell_name(model, depth):
    """The keras-tuner project (folder) of one (model, depth) cell, e.g. "vit_bnffn_d3"."""
    return f"{model}_d{depth}"
