"""scripts/check_no_diaries.py, which CI runs over keras_vitbn/ before the tests."""

import os
import subprocess
import sys

from tests.testing import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "check_no_diaries.py")


def _check(*paths):
    return subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_library_code_has_no_diaries():
    result = _check("keras_vitbn")
    assert result.returncode == 0, result.stdout


def test_diary_lines_are_caught_and_mechanisms_pass(tmp_path):
    diary = {
        "# trained 539 -> 610 images/s, interleaved": "a speed pair",
        "# ViT 503 vs 584 images/s": "a speed pair",
        "# TensorFlow 1491 -> 1799, JAX 1250 -> 1372": "a speed pair",
        "# measured again on 2026-12-01": "a date",
        "# the same command on Dec 1": "a date",
        "# after a restart at 04:00 UTC": "a time of day",
        "# on a 2-core AMD EPYC, Zen 4": "a machine name",
    }
    fine = [
        '"""Trains about 13% faster: one representative number, 600 images/s."""',
        "# a 17 x 17 by 17 x 64 product runs 3-4x slower as a dot",
        '# Virtual machines often report a bare "AMD EPYC": the family tells them apart',
        'stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")',
    ]
    (tmp_path / "diary.py").write_text("\n".join(diary) + "\n")
    (tmp_path / "fine.py").write_text("\n".join(fine) + "\n")
    result = _check(str(tmp_path / "diary.py"))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    for number, (text, what) in enumerate(diary.items(), 1):
        assert any(line.startswith(f"{tmp_path / 'diary.py'}:{number}: {what}: ") for line in lines), (text, lines)
    result = _check(str(tmp_path / "fine.py"))
    assert result.returncode == 0, result.stdout
