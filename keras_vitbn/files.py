"""Small file helpers shared by the trainers, the tuner and the experiment runner."""

import json
import os


def read_json(path):
    """The JSON value in `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    """Writes `value` atomically: a reader never sees half a file, a crash never loses the old one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
