"""What a measurement records about the machine and the code: keras_vitbn.utils.machine."""

import os
import re
import shutil

import pytest

from keras_vitbn.utils import machine
from tests.testing import ROOT


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_code_commit_is_the_current_folders_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert machine.code_commit() == ""  # not a checkout: an installed package records no commit
    if os.path.isdir(os.path.join(ROOT, ".git")):
        monkeypatch.chdir(ROOT)
        assert re.fullmatch(r"[0-9a-f]{4,40}", machine.code_commit())


def test_cpu_id_names_the_processor():
    assert isinstance(machine.cpu_id(), str) and machine.cpu_id()


def test_machine_info_records_the_thread_variables_set(monkeypatch):
    for name in machine.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert machine.machine_info()["threads"] == {}  # the libraries' defaults: every core
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "jax"))  # not a thread variable
    info = machine.machine_info()
    assert info["threads"] == {"TF_NUM_INTRAOP_THREADS": "1"} and info["cpu"] == machine.cpu_id()
