"""One line on stderr, never a traceback, for a user's mistake in any command.

Every command's `main` is wrapped by `command`: an exception that escapes it
becomes one `error: ...` line and a non-zero exit status (2 for bad input, 1
for anything unexpected, 130 for Ctrl-C); `KERAS_VITBN_DEBUG=1` lets the
traceback through. `ArgumentParser` reports a bad flag in one line too (the
usage is in `--help`).

TensorFlow prints start-up lines on stderr when it loads (absl's "All log
messages before absl::InitializeLog()", oneDNN's notice) before any Python
setting can stop them. `quiet_startup()` imports TensorFlow with those held
back. It changes process-wide state (the environment, file descriptor 2 for the
import's duration), so only entry points call it: `keras_vitbn/__init__.py`
calls it for `python -m keras_vitbn.<command>` and for scripts that set
`KERAS_VITBN_ENTRY_POINT = True` before importing keras_vitbn; a library import
changes nothing.

Example:
>>> @command
... def main(argv=None):
...     args = ArgumentParser(prog="python -m keras_vitbn.thing").parse_args(argv)
...     ...
>>> sys.exit(main())
"""

import argparse
import functools
import os
import sys
import tempfile

DEBUG_ENV = "KERAS_VITBN_DEBUG"
# Exceptions that mean bad input (flags, files, data, configs), not a bug of the project.
USER_ERRORS = (ValueError, OSError, NotImplementedError, SyntaxError, ImportError, KeyError, TypeError)
# TensorFlow's start-up lines that say nothing to a user of these commands.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


def debug():
    """Whether the user asked for full tracebacks (KERAS_VITBN_DEBUG set and not 0)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(text):
    """`text` with its lines joined, so that a message always takes one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def quiet_startup():
    """Imports TensorFlow with its start-up logging held back (other stderr output is passed on).

    Sets TF_CPP_MIN_LOG_LEVEL=2 unless the user chose a level. Entry points only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or debug():
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # the command that needs it says so
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            passed = "".join(line for line in lines if not any(noise in line for noise in STARTUP_NOISE))
            if passed:
                sys.stderr.write(passed)
                sys.stderr.flush()


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line: `error: <what>; see <prog> --help`."""

    def error(self, message):
        self.exit(2, f"error: {one_line(message)}; see {self.prog} --help\n")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def report(error, status=2):
    """Prints `error` as one line on stderr; returns the exit status for it."""
    if isinstance(error, KeyboardInterrupt):
        print("\ninterrupted", file=sys.stderr)
        return 130
    if isinstance(error, USER_ERRORS):
        message = str(error) if isinstance(error, (ValueError, NotImplementedError)) else _describe(error)
        print(f"error: {one_line(message) or type(error).__name__}", file=sys.stderr)
        return status
    print(
        f"error: unexpected {type(error).__name__}: {one_line(error)} (rerun with {DEBUG_ENV}=1 for the "
        "traceback, and report it)",
        file=sys.stderr,
    )
    return 1


def _describe(error):
    if isinstance(error, OSError):
        if not error.strerror:
            return str(error)
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, SyntaxError):
        return f"syntax error in {error.filename}, line {error.lineno}: {error.msg}"
    if isinstance(error, KeyError):
        return f"missing key {error}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def command(main=None, *, status=2):
    """Decorates a command's `main(argv=None) -> int`: escaping errors become one line and an exit status.

    Args:
        main: callable. The command's main function.
        status: int. Exit status for bad input. Defaults to 2.
    """
    if main is None:
        return functools.partial(command, status=status)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as error:  # noqa: BLE001 - the point of this wrapper
            if debug() or not isinstance(error, (Exception, KeyboardInterrupt)):
                raise
            return report(error, status)

    return wrapper
