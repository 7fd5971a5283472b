"""Every command, given bad input: a non-zero exit, one line on stderr, no traceback, nothing lost.

The table runs each command's `main` in this process (fast, every backend),
and as a real subprocess, the way a user meets these errors, where
TensorFlow's start-up logging must stay out of stderr too. Subprocesses are
slow, so two of them run by default and the whole table with --run-large; the
commands do not depend on the backend, so those run on TensorFlow only.
"""

import importlib
import os
import subprocess
import sys

import keras
import pytest

from keras_vitbn.utils import cli_errors
from tests.testing import ROOT

one_backend = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="subprocesses; the commands do not depend on the backend"
)
large = pytest.mark.large

# command name -> (how a user starts it, the module whose `main(argv)` it runs, extra keyword arguments)
COMMANDS = {
    "trainer": ([os.path.join(ROOT, "trainers", "fashion_mnist.py")], "keras_vitbn.training.cli", "fashion_mnist"),
    "tuner": ([os.path.join(ROOT, "tuning", "lr_per_depth.py")], "keras_vitbn.tuning.cli", None),
    "experiments": (["-m", "keras_vitbn.experiments"], "keras_vitbn.experiments.cli", None),
    "evaluate": (["-m", "keras_vitbn.tools.evaluate"], "keras_vitbn.tools.evaluate", None),
    "convert": (["-m", "keras_vitbn.tools.convert"], "keras_vitbn.tools.convert", None),
    "benchmark": (["-m", "keras_vitbn.tools.benchmark"], "keras_vitbn.tools.benchmark.__main__", None),
    "predict": (["-m", "keras_vitbn.tools.predict"], "keras_vitbn.tools.predict", None),
    # An installed console script (pip install -e .), run by this interpreter.
    "keras-vitbn-evaluate": (
        [os.path.join(os.path.dirname(sys.executable), "keras-vitbn-evaluate")],
        "keras_vitbn.tools.evaluate",
        None,
    ),
}

# (command, arguments, text the error line must contain); {file} is a regular file, {mine} a folder of
# a user's own files, {data} the Fashion-MNIST folder, {bad_config} an experiment config with a syntax error.
CASES = [
    ("trainer", ["--overwrite", "--output-dir", "{mine}", "--lr", "-1"], "learning rate"),
    ("trainer", ["--overwrite", "--output-dir", "{mine}", "--data-dir", "{data}"], "not a keras_vitbn run folder"),
    ("trainer", ["--epochs", "many"], "invalid int value"),
    ("tuner", ["--models", "vit", "--depths", "1", "--output-dir", "{file}/search"], "cannot write the search folder"),
    ("tuner", ["--tuner", "exhaustive"], "invalid choice"),
    (
        "tuner",
        ["--overwrite", "--output-dir", "{mine}", "--data-dir", "{data}", "--depths", "1"],
        "not a keras_vitbn search folder",
    ),
    ("experiments", ["--config", "no_such_config"], "no experiment config"),
    ("experiments", ["--config", "{bad_config}"], "syntax error in"),
    ("experiments", ["--config", "depth_sweep", "--seeds", "x"], "argument --seeds"),
    ("evaluate", ["model.keras", "--data-dir", "{data}", "--batch-size", "0"], "positive integer"),
    ("evaluate", ["model.keras", "--data-dir", "{data}", "--plot", "{file}/c.png"], "cannot write --plot"),
    ("convert", ["reference.pth", "{file}/out.keras"], "cannot create the folder"),
    ("convert", ["{file}", "out.txt"], "must end in .keras"),
    ("benchmark", ["--smoke", "--output", "{file}/bench"], "cannot create the folder of --output"),
    ("benchmark", ["--models", "resnet"], "invalid choice"),
    ("predict", ["no_such_model.keras", "{file}"], "no_such_model.keras"),
    ("keras-vitbn-evaluate", ["model.keras", "--data-dir", "{data}", "--batch-size", "-5"], "positive integer"),
]
# The subprocesses of the default suite: the folder that must survive, and a `python -m` command.
DEFAULT_SUBPROCESS = {0, 13}


def run_command(name, args, cwd, debug=False):
    env = {k: v for k, v in os.environ.items() if k not in (cli_errors.DEBUG_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    env.update(KERAS_BACKEND=keras.backend.backend(), PYTHONPATH=ROOT)
    if debug:
        env[cli_errors.DEBUG_ENV] = "1"
    return subprocess.run(
        [sys.executable, *COMMANDS[name][0], *args], capture_output=True, text=True, env=env, cwd=str(cwd), timeout=600
    )


def run_in_process(name, args, capsys, monkeypatch, cwd):
    from keras_vitbn.training.presets import PRESETS

    _, module, preset = COMMANDS[name]
    main = importlib.import_module(module).main
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(cli_errors.DEBUG_ENV, raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # restored afterwards: the tuner may request CPU devices
    try:
        code = main(args, defaults=PRESETS[preset]) if preset else main(args)
    except SystemExit as exit:  # argparse
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture
def places(tmp_path, shared_data):
    (tmp_path / "file").write_text("a regular file\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("a user's own work\n")
    (tmp_path / "bad_config.py").write_text("def get_config(arg=None):\n    return (\n")
    return {
        "file": str(tmp_path / "file"),
        "mine": str(mine),
        "data": os.path.join(shared_data, "fashion-mnist"),
        "bad_config": str(tmp_path / "bad_config.py"),
    }


def check_one_line(code, stderr, expected, places):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code not in (0, None), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert os.listdir(places["mine"]) == ["thesis.tex"]  # nothing of the user's was touched


@pytest.mark.parametrize("name,args,expected", CASES)
def test_bad_input_one_line_in_process(name, args, expected, places, tmp_path, capsys, monkeypatch):
    code, stderr = run_in_process(name, [a.format(**places) for a in args], capsys, monkeypatch, tmp_path)
    check_one_line(code, stderr, expected, places)


@one_backend
@pytest.mark.parametrize(
    "name,args,expected",
    [case if i in DEFAULT_SUBPROCESS else pytest.param(*case, marks=large) for i, case in enumerate(CASES)],
)
def test_bad_input_one_line_subprocess(name, args, expected, places, tmp_path):
    if not os.path.exists(COMMANDS[name][0][0]) and COMMANDS[name][0][0] != "-m":
        pytest.skip(f"{COMMANDS[name][0][0]} is not installed (pip install -e .)")
    proc = run_command(name, [a.format(**places) for a in args], tmp_path)
    check_one_line(proc.returncode, proc.stderr, expected, places)


@one_backend
@large
def test_debug_keeps_the_traceback(places, tmp_path):
    proc = run_command("benchmark", ["--smoke", "--output", places["file"] + "/bench"], tmp_path, debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "cannot create the folder" in proc.stderr


def test_error_report_is_one_line(capsys):
    @cli_errors.command
    def main(error):
        raise error

    assert main(ValueError("first line\n  second line")) == 2
    assert main(PermissionError(13, "Permission denied", "/root/x.png")) == 2
    assert main(SyntaxError("invalid syntax", ("c.py", 3, 1, "x = (\n"))) == 2
    assert main(RuntimeError("a bug")) == 1
    assert main(KeyboardInterrupt()) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "error: first line second line",
        "error: /root/x.png: Permission denied",
        "error: syntax error in c.py, line 3: invalid syntax",
        f"error: unexpected RuntimeError: a bug (rerun with {cli_errors.DEBUG_ENV}=1 for the traceback, and report it)",
        "interrupted",
    ]
