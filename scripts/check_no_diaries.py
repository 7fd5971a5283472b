"""Fails when library code reads like a lab notebook: dates, machine names, before/after speed pairs.

    python scripts/check_no_diaries.py [PATH ...]   (default: keras_vitbn)

Measurements belong in the benchmark's result files and docs/performance.md; a
docstring or comment explains a mechanism, with at most one representative
number. Prints every hit as PATH:LINE: TEXT and exits 1 if there is any.
"""

import os
import re
import sys

MONTHS = (
    "Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:tember)?|Oct(?:ober)?"
    "|Nov(?:ember)?|Dec(?:ember)?"
)
NUMBER = r"\d[\d,.]*"
PATTERNS = {
    "a date": re.compile(rf"\b20\d\d-[01]\d(?:-[0-3]\d)?\b|\b(?:{MONTHS})\.? [0-3]?\d\b|\b[0-3]?\d (?:{MONTHS})\b"),
    "a time of day": re.compile(r"\b[0-2]\d:[0-5]\d(?::[0-5]\d)? ?(?:UTC|GMT|CET)\b"),
    "a machine name": re.compile(
        r"\b(?:EPYC|Xeon|Zen ?\d|Ryzen|Threadripper|Skylake|Cascade Lake|Ice Lake|Sapphire Rapids|Graviton|"
        r"Neoverse|Apple M\d)\b"
    ),
    "a speed pair": re.compile(
        rf"{NUMBER}\s*(?:vs\.?|->|→|/|and|to)\s*{NUMBER}\s*(?:\w+\s+)?(?:images|img|samples|steps)/s"
        rf"|\b\d{{3,}}\s*(?:->|→)\s*\d{{3,}}\b"
    ),
}


# A machine name in quotes or backticks is a string the code handles (an example of
# what it parses or prints), not a record of where something was measured.
QUOTED = re.compile(r"`[^`]*`|\"[^\"]*\"|'[^']*'")


def hits(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            for what, pattern in PATTERNS.items():
                text = QUOTED.sub("", line) if what == "a machine name" else line
                if pattern.search(text):
                    yield number, what, line.strip()


def python_files(paths):
    for path in paths:
        if os.path.isfile(path):
            yield path
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            yield from (os.path.join(root, name) for name in sorted(files) if name.endswith(".py"))


def main(argv=None):
    paths = (sys.argv[1:] if argv is None else argv) or ["keras_vitbn"]
    found = 0
    for path in python_files(paths):
        for number, what, text in hits(path):
            print(f"{path}:{number}: {what}: {text}")
            found += 1
    if found:
        print(
            f"{found} diary line(s): move measurements to docs/performance.md or the benchmark's results",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
