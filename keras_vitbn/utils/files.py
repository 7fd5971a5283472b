"""Every file the project writes, and the run folders it writes them into.

Writes are atomic: the content goes to a uniquely named temporary file in the
same folder, is flushed to disk (fsync), and is renamed over the target, so a
reader, or a run killed mid-save, sees the old file or the new one, never half
of one. JSON-lines readers skip a half-written last line.

Run and search folders carry a marker file (`MARKER`) and are locked while a
process writes them (`run_folder`): a second process in the same folder is
refused with one line naming the holder, and `--overwrite` deletes only a folder
that carries the marker, only after the new run has validated.

Example:
>>> write_json("runs/x/status.json", {"status": "running"})
>>> with run_folder("runs/x", "run", overwrite=True) as folder:
...     folder.clear()  # after the config and data have validated
...     write_text(os.path.join(folder.path, "notes.txt"), "hello\\n")
"""

import contextlib
import datetime
import json
import os
import shutil
import socket
import uuid

MARKER = ".keras_vitbn_run.json"
LOCK = ".keras_vitbn.lock"
# What a run or search folder written before the marker existed may hold: such a folder is
# adopted (given a marker); a folder holding anything else is someone else's.
KNOWN_FILES = {
    "run": {
        "config.json",
        "status.json",
        "history.csv",
        "history.jsonl",
        "model_best.keras",
        "model_last.keras",
        "curves.png",
        "tensorboard",
        "backup",
        "mlflow_run_id",
        "runner.json",
        "runner.lock",
    },
    "search": {
        "search.json",
        "kt",
        "results.csv",
        "results.md",
        "trials.csv",
        "best_lr_vs_depth.png",
        "heatmap.png",
        "best_models",
        "report.log",
    },
}


class RunFolderError(ValueError):
    """A run folder that cannot be used: someone else's files, another process' lock, no permission."""


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the extension (Keras and matplotlib choose the
    format by it) and is unique per process and call, so concurrent writers
    never share one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(directory, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # whatever wrote it (Keras, matplotlib) may not have synced
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def write_json(path, value, sort_keys=False):
    """Writes `value` as indented JSON atomically (objects JSON lacks are written as their str)."""
    write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")


def save_model(model, path):
    """`model.save(path)` atomically: a kill during the save leaves the previous file intact."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def save_figure(fig, path, **kwargs):
    """`fig.savefig(path, **kwargs)` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


def check_writable(path, what="output file"):
    """Raises ValueError (one line) unless a file can be written at `path`: call it before long work."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder: give a file name")
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {what} {path}: {directory} is not an existing folder")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"cannot write {what} {path}: the folder {directory} is not writable")


# --------------------------------------------------------------------------- reading


def read_json(path, default=None):
    """The JSON value in `path`, or `default` when there is no such file.

    Raises ValueError, naming the file, when it is not valid JSON.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): move it away or repair it") from None


def read_jsonl(path):
    """The rows (dicts) of a JSON-lines file; [] when there is no such file.

    A last line that does not parse as an object is a write cut short by a kill
    and is skipped; a bad line before the last is damage, and raises ValueError.
    """
    try:
        with open(path) as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
    except FileNotFoundError:
        return []
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)  # json accepts NaN / Infinity
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not a JSON object ({error}): the file is damaged") from None
        rows.append(row)
    return rows


def append_jsonl(path, row):
    """Appends one JSON line and syncs it; first drops a half-written last line left by a kill."""
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - 65536))
            tail = f.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                f.truncate(size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else size))
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- run folders


def is_marked(path):
    """Whether `path` is a folder this project created (it carries `MARKER`)."""
    return os.path.isfile(os.path.join(path, MARKER))


def _foreign_entries(path, kind):
    """Entries of `path` that are not this project's `kind` files (temporary files count as its own)."""
    known = KNOWN_FILES[kind] | {MARKER, LOCK}
    foreign = []
    for name in sorted(os.listdir(path)):
        temporary = (name.startswith(".") and ".tmp-" in name) or any(name.startswith(k + ".tmp") for k in known)
        if name in known or temporary or (kind == "run" and name.startswith("worker")):
            continue
        foreign.append(name)
    return foreign


def _holder(lock_path):
    try:
        with open(lock_path) as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    text = f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')}"
    if info.get("command"):
        text += f" ({info['command']})"
    return text


class RunFolder:
    """A locked run or search folder; see `run_folder`."""

    def __init__(self, path, kind, overwrite, created):
        self.path = path
        self.kind = kind
        self.overwrite = overwrite
        self.created = created
        self.cleared = False

    def clear(self):
        """With `overwrite`, deletes everything the folder holds (but its marker and lock); else nothing.

        Call it once the new run has validated, so that a bad flag or bad data
        leaves the old results in place.
        """
        if not self.overwrite or self.cleared:
            return
        for name in os.listdir(self.path):
            if name in (MARKER, LOCK):
                continue
            entry = os.path.join(self.path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.remove(entry)
        self.cleared = True


@contextlib.contextmanager
def run_folder(path, kind, overwrite=False, command=None, lock=True):
    """Opens `path` as this project's `kind` ("run" or "search") folder, locked for this process.

    Refuses (RunFolderError, one line) a path that is a file, a folder of
    someone else's files (no marker, and entries the project does not write),
    a folder of the other kind, and a folder another process holds. The lock is
    an `fcntl.flock` on `LOCK` inside the folder: the kernel drops it when the
    holder exits, even on kill -9, so there are no stale locks to clean up. A
    folder this call created is removed again if the body raises before
    writing anything.

    Args:
        path: str. The folder; created with its parents if missing.
        kind: str. "run" or "search".
        overwrite: bool. Let `RunFolder.clear()` delete the folder's contents.
        command: str or None. Recorded in the lock file, for the refusal message.
        lock: bool. False for processes that share the folder with its holder
            (the workers of a distributed search).

    Yields:
        RunFolder.
    """
    path = os.fspath(path)
    if kind not in KNOWN_FILES:
        raise ValueError(f"unknown folder kind {kind!r}: use one of {', '.join(KNOWN_FILES)}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(f"{path} is a file, not a folder: choose another output folder")
    created = not os.path.exists(path)
    if not created:
        _check_ours(path, kind, overwrite)
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644) if lock else None
    except OSError as error:
        raise RunFolderError(
            f"cannot write the {kind} folder {path}: {error.strerror}: choose a writable output folder"
        ) from None
    try:
        if fd is not None:
            _lock(fd, path, command)
        _mark(path, kind)
        folder = RunFolder(path, kind, overwrite, created)
        try:
            yield folder
        except BaseException:
            if created and set(os.listdir(path)) <= {MARKER, LOCK}:
                shutil.rmtree(path, ignore_errors=True)  # nothing was written: leave no trace
            raise
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock


def _check_ours(path, kind, overwrite):
    """Raises RunFolderError unless the existing folder `path` is this project's `kind` folder, or may become one.

    A folder without the marker may become one when it holds only what such a
    folder holds (`KNOWN_FILES`): one written before the marker existed.
    """
    if not is_marked(path):
        foreign = _foreign_entries(path, kind)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            action = "refusing to delete it with --overwrite" if overwrite else "refusing to write into it"
            raise RunFolderError(
                f"{path} is not a keras_vitbn {kind} folder (it holds {shown}, and no {MARKER}): "
                f"{action}; choose a new or empty output folder"
            )
        return
    try:
        recorded = (read_json(os.path.join(path, MARKER)) or {}).get("kind", kind)
    except ValueError:
        recorded = kind  # a damaged marker still marks the folder as ours
    if recorded != kind:
        raise RunFolderError(
            f"{path} is a keras_vitbn {recorded} folder, not a {kind} folder: choose another output folder"
        )


def _lock(fd, path, command):
    """Takes the folder's lock on the open `LOCK` file `fd` and records the holder in it; refuses a held one."""
    import fcntl  # POSIX only: needed once a folder is locked, not to import this module

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderError(
            f"{path} is in use by {_holder(os.path.join(path, LOCK))}: wait for it to "
            "finish, or choose another output folder"
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _mark(path, kind):
    """Writes the project's marker into the folder, unless it has one."""
    marker = os.path.join(path, MARKER)
    if not os.path.exists(marker):
        write_json(
            marker,
            {
                "kind": kind,
                "written_by": "keras_vitbn",
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        )
