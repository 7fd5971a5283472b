"""Runs an experiment grid with the project trainer, caching every run by config hash.

Each run trains in its own folder `<cache_dir>/<model>-d<depth>-lr<lr>-s<seed>-<hash>`,
where the hash covers the resolved `TrainConfig` (minus output_dir and mlflow), the
Keras backend and `CACHE_VERSION`. A folder whose `status.json` says "completed"
or "diverged" is a result and is never trained again; any other folder is handed
back to the trainer, which resumes it. Experiments that share runs (depth_sweep
and lr_stability) share the cache when they share `cache_dir`.

Example (the train function is injectable; tests pass a fake one):

>>> from keras_vitbn.experiments import ExperimentConfig, run_experiment
>>> cfg = ExperimentConfig(name="demo", depths=(1,), seeds=(0,), epochs=1)
>>> records = run_experiment(cfg, "runs/demo")  # doctest: +SKIP
"""

import dataclasses
import datetime
import gc
import hashlib
import json
import os
import sys
import time
import traceback

from keras_vitbn.experiments.config import RunSpec
from keras_vitbn.utils import files
from keras_vitbn.utils.machine import load_average, machine_info
from keras_vitbn.utils.progress import Progress, format_duration

CACHE_VERSION = 1
# Data folders are where the data sit, not which data: leaving them out keeps a cache
# (and committed results) valid in another checkout; `dataset` and `source` still count.
HASH_EXCLUDE = ("output_dir", "mlflow", "data_dir", "test_data_dir")
DONE = ("completed", "diverged")
RUNNER_FILE = "runner.json"
LOCK_FILE = "runner.lock"


@dataclasses.dataclass
class RunRecord:
    """The outcome of one grid cell.

    Args:
        spec: RunSpec. model, depth, learning_rate, seed.
        run_dir: str. Folder of the run.
        config_hash: str. Hash of the resolved config (the cache key).
        status: str. "completed", "diverged", "failed", "running" (locked by
            another process) or "planned" (dry run).
        history: list of dict. Per-epoch metrics as written by the trainer.
        cached: bool. True when it was a result already and nothing was trained.
        error: str or None. The exception of a failed run.
        reason: str or None. The trainer's reason (e.g. for divergence).
    """

    spec: object
    run_dir: str
    config_hash: str
    status: str
    history: list
    cached: bool = False
    error: object = None
    reason: object = None

    @property
    def model(self):
        return self.spec.model

    @property
    def depth(self):
        return self.spec.depth

    @property
    def learning_rate(self):
        return self.spec.learning_rate

    @property
    def seed(self):
        return self.spec.seed

    def to_dict(self):
        return dict(
            model=self.model,
            depth=self.depth,
            learning_rate=self.learning_rate,
            seed=self.seed,
            run_dir=self.run_dir,
            config_hash=self.config_hash,
            status=self.status,
            error=self.error,
            reason=self.reason,
            history=self.history,
            **({} if self.spec.norm is None else {"norm": self.spec.norm}),
        )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _empty(value):
    return value is None or (isinstance(value, (dict, list, tuple, str)) and not value)


def hash_key(train_dict):
    """The part of a resolved train config that identifies a run.

    Leaves out `HASH_EXCLUDE` (output folder, MLflow, data locations), and fields whose value is empty (None, {}, [],
    ""): a field the trainer adds later with an empty default (as `distribute_options`
    was) then leaves existing hashes, and so the cache, unchanged.
    """
    return {k: v for k, v in train_dict.items() if k not in HASH_EXCLUDE and not _empty(v)}


def config_hash(train_dict, backend):
    """Stable hash of a run: `hash_key(train_dict)` + backend + CACHE_VERSION."""
    key = hash_key(train_dict)
    payload = json.dumps(
        {"config": _jsonable(key), "backend": backend, "version": CACHE_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def read_json(path, default=None):
    """`keras_vitbn.utils.files.read_json`, but a damaged or unreadable file reads as `default`: a sweep goes on."""
    try:
        return files.read_json(path, default)
    except (OSError, ValueError):
        return default


def write_json(path, obj):
    files.write_json(path, _jsonable(obj), sort_keys=True)


def read_history(run_dir):
    """Per-epoch dicts from `history.jsonl` (NaN-tolerant, a half-written last line skipped); [] when absent."""
    return files.read_jsonl(os.path.join(run_dir, "history.jsonl"))


def run_status(run_dir):
    """The trainer's status ("completed", "diverged", ...) or None."""
    status = read_json(os.path.join(run_dir, "status.json"))
    if isinstance(status, dict):
        return status.get("status"), status.get("reason")
    return None, None


def resolve_backend(backend=None):
    """Selects the Keras backend (before keras is imported) and returns its name."""
    if backend:
        mod = sys.modules.get("keras")
        if mod is not None and hasattr(mod, "backend") and mod.backend.backend() != backend:
            raise ValueError(
                f"keras is already imported with backend {mod.backend.backend()!r}; "
                f"set KERAS_BACKEND={backend} before starting Python to use {backend!r}"
            )
        os.environ["KERAS_BACKEND"] = backend
    import keras

    return keras.backend.backend()


def default_train_fn(config):
    # deferred: the trainer loads TensorFlow (tf.data); reports and injected train functions need neither
    from keras_vitbn.training.train import train

    return train(config)


def default_config_factory(d):
    # deferred: as in default_train_fn (importing keras_vitbn.training loads the trainer and TensorFlow)
    from keras_vitbn.training.config import TrainConfig

    return TrainConfig.from_dict(d)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire_lock(run_dir):
    path = os.path.join(run_dir, LOCK_FILE)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = read_json(path, {}) or {}
            pid = owner.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                return False
            try:  # stale lock from a dead process
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": os.uname().nodename}, f)
        return True
    return False


def _release_lock(run_dir):
    try:
        os.remove(os.path.join(run_dir, LOCK_FILE))
    except FileNotFoundError:
        pass


def _to_dict(config, fallback):
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(fallback)


def _clear_session():
    """Frees the previous run's graph and weights (clear_session also runs gc)."""
    keras = sys.modules.get("keras")
    if keras is not None:
        try:
            keras.backend.clear_session()
            return
        except Exception:  # noqa: BLE001 - best effort between runs
            pass
    gc.collect()


def find_equivalent_run(cache_dir, spec, full, backend):
    """A finished run folder of the same spec whose recorded config matches `full`.

    Keeps results found under an older hash (e.g. from before the trainer gained a
    field) usable: folders are matched on `hash_key` of their runner.json config.
    """
    prefix = f"{spec.slug()}-"
    key = json.dumps(hash_key(full), sort_keys=True, default=str)
    try:
        names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        return None
    for name_ in names:
        if not name_.startswith(prefix):
            continue
        run_dir = os.path.join(cache_dir, name_)
        meta = read_json(os.path.join(run_dir, RUNNER_FILE)) or {}
        if meta.get("backend") != backend or run_status(run_dir)[0] not in DONE:
            continue
        old = json.dumps(hash_key(meta.get("train_config") or {}), sort_keys=True, default=str)
        if old == key:
            return os.path.abspath(run_dir)
    return None


def plan(cfg, cache_dir, backend, config_factory=None):
    """(spec, train config object, hash, run_dir) for every run of the grid."""
    factory = config_factory or default_config_factory
    out = []
    for spec in cfg.runs():
        d = cfg.train_dict(spec)
        probe = factory(dict(d, output_dir=""))
        full = _to_dict(probe, d)
        h = config_hash(full, backend)
        run_dir = os.path.abspath(os.path.join(cache_dir, f"{spec.slug()}-{h}"))
        if not os.path.isdir(run_dir):
            run_dir = find_equivalent_run(cache_dir, spec, full, backend) or run_dir
        config = factory(dict(full, output_dir=run_dir))
        out.append((spec, config, h, run_dir))
    return out


def run_experiment(
    cfg,
    out_dir,
    cache_dir=None,
    train_fn=None,
    config_factory=None,
    backend=None,
    log=print,
    fail_fast=False,
    dry_run=False,
    clear_session=True,
):
    """Trains every run of `cfg` that is not cached yet and returns their records.

    Args:
        cfg: ExperimentConfig. The grid.
        out_dir: str. Where the experiment's results.json (and report) go.
        cache_dir: str or None. Where runs live, keyed by hash. Defaults to
            `<out_dir>/../cache`, so experiments under one root share runs.
        train_fn: callable or None. `train(config) -> dict`; defaults to
            `keras_vitbn.training.train.train`.
        config_factory: callable or None. dict -> config object passed to
            `train_fn`; defaults to `TrainConfig.from_dict`.
        backend: str or None. Keras backend to select (must match an already
            imported keras); None keeps KERAS_BACKEND / the keras default.
        log: callable. Progress printer. Defaults to print.
        fail_fast: bool. Re-raise a run's exception instead of recording it.
        dry_run: bool. Only plan and report what would run.
        clear_session: bool. Call `keras.backend.clear_session()` after each run.

    Returns:
        list of RunRecord, in grid order.
    """
    backend = resolve_backend(backend)
    out_dir, cache_dir = _experiment_dirs(out_dir, cache_dir)
    planned = plan(cfg, cache_dir, backend, config_factory)
    total = len(planned)
    n_cached = sum(1 for *_, rd in planned if run_status(rd)[0] in DONE)
    log(
        f"[{cfg.name}] {total} runs on backend {backend} ({n_cached} cached, "
        f"{total - n_cached} to train); cache {cache_dir}"
    )
    runner = _GridRunner(
        experiment=cfg.name,
        backend=backend,
        train_fn=train_fn or default_train_fn,
        log=log,
        progress=Progress(total, to_compute=0 if dry_run else total - n_cached),
        fail_fast=fail_fast,
        dry_run=dry_run,
        clear_session=clear_session,
    )
    width = len(str(total))
    records = [runner.record(f"[run {i:>{width}}/{total}]", *run) for i, run in enumerate(planned, 1)]
    # Folders relative to results.json, so committed results hold no path of this machine.
    write_json(
        os.path.join(out_dir, "results.json"),
        dict(
            experiment=cfg.to_dict(),
            backend=backend,
            cache_dir=os.path.relpath(cache_dir, out_dir),
            records=[{**r.to_dict(), "run_dir": os.path.relpath(r.run_dir, out_dir)} for r in records],
        ),
    )
    return records


def _experiment_dirs(out_dir, cache_dir):
    """(out_dir, cache_dir) as absolute paths, both created; the cache defaults to `<out_dir>/../cache`."""
    out_dir = os.path.abspath(out_dir)
    if cache_dir is None:
        cache_dir = os.path.join(os.path.dirname(out_dir), "cache")
    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(cache_dir, exist_ok=True)
    return out_dir, cache_dir


def whole_run_seconds(seconds, resumed_after_epoch, epochs):
    """The time of a whole run from the `seconds` of its last process, which trained only the
    epochs after `resumed_after_epoch` (of `epochs`): the earlier ones are priced pro rata."""
    if 0 < resumed_after_epoch < epochs:
        return seconds * epochs / (epochs - resumed_after_epoch)
    return seconds


@dataclasses.dataclass
class _GridRunner:
    """Runs the cells of one experiment one by one: what they share (`run_experiment`'s arguments, the progress)."""

    experiment: str
    backend: str
    train_fn: object
    log: object
    progress: Progress
    fail_fast: bool
    dry_run: bool
    clear_session: bool

    def record(self, tag, spec, config, h, run_dir):
        """The RunRecord of one planned run: its cached result, its plan (dry run), a skip, or a fresh training."""
        status, reason = run_status(run_dir)
        if status in DONE:
            self.progress.skip()
            self.log(f"{tag} cached ({status}): {spec.label()} -> {os.path.basename(run_dir)}")
            return RunRecord(spec, run_dir, h, status, read_history(run_dir), True, None, reason)
        if self.dry_run:
            self.log(f"{tag} would train: {spec.label()} -> {os.path.basename(run_dir)}")
            return RunRecord(spec, run_dir, h, "planned", read_history(run_dir))
        os.makedirs(run_dir, exist_ok=True)
        if not _acquire_lock(run_dir):
            self.progress.skip(planned=True)
            self.log(f"{tag} skipped, another process is training it: {spec.label()}")
            return RunRecord(spec, run_dir, h, "running", read_history(run_dir))
        return self._train(tag, spec, config, h, run_dir)

    def _train(self, tag, spec, config, h, run_dir):
        """Trains (or resumes) a run whose lock this process holds; runner.json records it before and after."""
        resuming = os.path.exists(os.path.join(run_dir, "history.jsonl"))
        epochs_before = len(read_history(run_dir)) if resuming else 0
        self.log(
            f"{tag} {'resuming' if resuming else 'training'}: {spec.label()} "
            f"-> {os.path.basename(run_dir)} ({self.progress.line()})"
        )
        meta = dict(
            config_hash=h,
            backend=self.backend,
            cache_version=CACHE_VERSION,
            spec=dataclasses.asdict(spec),
            train_config=_to_dict(config, {}),
            experiment=self.experiment,
            started=datetime.datetime.now().isoformat(timespec="seconds"),
            machine=machine_info(),
            resumed_after_epoch=epochs_before,
        )
        write_json(os.path.join(run_dir, RUNNER_FILE), meta)
        t0 = time.time()
        result, error = self._call_train_fn(tag, spec, config, run_dir, meta)
        status, reason = run_status(run_dir)
        if error is None and status is None:
            status, reason = result.get("status"), result.get("reason")
        if error is not None or status not in DONE:
            status = "failed"
            error = error or f"trainer returned status {result.get('status')!r}"
        history = read_history(run_dir) or list(result.get("history") or [])
        meta.update(
            status=status,
            error=error,
            seconds=round(time.time() - t0, 2),
            finished=datetime.datetime.now().isoformat(timespec="seconds"),
            load_end=load_average(),
        )
        write_json(os.path.join(run_dir, RUNNER_FILE), meta)
        _release_lock(run_dir)
        self.progress.finish(whole_run_seconds(time.time() - t0, epochs_before, len(history)))
        self.log(f"{tag} {status} in {format_duration(time.time() - t0)}; {self.progress.line()}")
        return RunRecord(spec, run_dir, h, status, history, False, error, reason)

    def _call_train_fn(self, tag, spec, config, run_dir, meta):
        """(result dict, error text or None): a failed run is recorded (its traceback into `meta`), not raised."""
        try:
            return self.train_fn(config) or {}, None
        except Exception as e:  # noqa: BLE001 - one failed run must not stop a sweep
            if self.fail_fast:
                _release_lock(run_dir)
                raise
            error = f"{type(e).__name__}: {e}"
            self.log(f"{tag} FAILED: {spec.label()}: {error}")
            meta["traceback"] = traceback.format_exc()
            return {}, error
        finally:
            if self.clear_session:
                _clear_session()


def load_records(path):
    """RunRecords back from a `results.json` written by `run_experiment`, run folders absolute."""
    data = read_json(path)
    if data is None:
        raise FileNotFoundError(f"no results at {path}")
    here = os.path.dirname(os.path.abspath(path))
    out = []
    for r in data["records"]:
        spec = RunSpec(r["model"], r["depth"], float(r["learning_rate"]), int(r["seed"]), r.get("norm"))
        out.append(
            RunRecord(
                spec,
                os.path.normpath(os.path.join(here, r["run_dir"])),
                r["config_hash"],
                r["status"],
                r["history"],
                True,  # read back from results: nothing is trained for it
                r.get("error"),
                r.get("reason"),
            )
        )
    return out
