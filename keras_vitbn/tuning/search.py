"""The learning-rate search per (model, depth) with keras-tuner: `search(config) -> dict`.

Every (model, depth) cell is its own keras-tuner project, searched in turn
(model by model, shallow to deep); inside a cell keras-tuner chooses learning
rates (`kt.HyperModel` below) by Bayesian optimisation, random or grid search.
A search directory holds:

    search.json                      resolved SearchConfig, data provenance, backend, command, and
                                     "searched_at" once every cell is searched (workers stop on it)
    kt/<model>_d<depth>/             the keras-tuner project of one cell: oracle.json,
        trial_<id>/trial.json          keras-tuner's record of the trial
        trial_<id>/outcome.json        status, failure reason, last-epoch metrics, per-epoch history
        trial_<id>/events.jsonl        one line per start/end of the trial (which process ran it)
        trial_<id>/model.keras         the trained model (last epoch) of a completed trial
    results.csv, results.md          one row per cell: best lr, its val and test accuracy, ...
    trials.csv                       one row per trial, failed ones with their reason
    best_lr_vs_depth.png             best learning rate (and its accuracy) against depth
    heatmap.png                      validation accuracy over depth x learning rate, per model
    best_models/<model>_d<depth>.keras (+ .json with its test accuracy)
    report.log                       one line per report written (who wrote it)

The objective is the validation accuracy at the last epoch, on a validation
split carved from the end of the training data; the test splits (clean and
augmented, the trainers' protocol) are evaluated on each cell's best model only,
after the search, and never guide it.

A trial whose loss becomes NaN or infinite is stopped, recorded as failed with
its reason (`kt.errors.FailedTrialError`), and the search goes on.

Resuming: rerunning the same command resumes every cell where it stopped,
whichever the tuner (grid, random, Bayesian) and wherever it was killed.
keras-tuner's own `oracle.json` cannot do this (its grid oracle keeps part of
its state in memory only, and a trial killed between its end and the oracle's
save is lost or run twice), so each cell keeps a ledger of its own:

    kt/<model>_d<depth>/ledger.jsonl   one line per finished trial (id, hyperparameters, status,
                                       metrics, seed), appended and synced once its files are saved

On a rerun a fresh oracle replays the ledger (it proposes each recorded trial
again and is told its recorded result), which puts it in the state an
uninterrupted search had at that point: finished trials are never retrained, and
an interrupted trial is proposed again and retrained from scratch. Every trial
starts from the cell's seed with a fresh input pipeline (same initial weights,
same shuffling and augmentation), so a retrained trial gives the result it would
have given uninterrupted, and the final tables equal an uninterrupted search's.

Devices: as in the trainers, a cell whose model was measured faster on several
XLA CPU devices (ViTs of depth >= 3 on JAX on a CPU-only host, see
`keras_vitbn.runtime.auto_distribute`) trains data parallel over them, the same
computation; `search.json` records each cell's choice and why, and
`--distribute none` keeps every cell on one device.

Distributed: the same command runs as one chief and N workers, switched by
keras-tuner's environment variables `KERASTUNER_TUNER_ID` ("chief" for the
chief), `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`. The chief serves
each cell's oracle over gRPC in turn and writes the report; workers run the
trials. All must see the same output directory (a shared file system). The
chief listens on `KERASTUNER_ORACLE_IP` only, and refuses 0.0.0.0 / :: (every
interface) unless `allow_all_interfaces`; every call carries the shared secret
of `KERAS_VITBN_TUNER_TOKEN` (`TOKEN_ENV`), which the chief checks, refusing
calls without it (UNAUTHENTICATED). The token is sent in the clear: across an
untrusted network, run the search inside a VPN or an SSH tunnel.
"""

import contextlib
import functools
import hmac
import json
import math
import os
import sys
import time

import grpc
import keras
import keras_tuner as kt

from keras_vitbn.data import augment as augment_lib
from keras_vitbn.data import datasets
from keras_vitbn.runtime import auto_distribute, distribute
from keras_vitbn.training import callbacks as training_callbacks
from keras_vitbn.training.train import build_model, compile_model, load_data, run_splits
from keras_vitbn.tuning import report as report_lib
from keras_vitbn.tuning.config import SearchConfig
from keras_vitbn.tuning.naming import LR, OBJECTIVE, cell_name, say
from keras_vitbn.utils.files import append_jsonl, read_json, run_folder, write_json
from keras_vitbn.utils.machine import machine_info
from keras_vitbn.utils.progress import Progress, format_percent

FINISHED = ("COMPLETED", "FAILED", "INVALID")  # keras-tuner trial statuses that count towards max_trials
CHIEF_POLL_SECONDS = 0.5
WORKER_POLL_SECONDS = 0.5
# A waiting worker asks the chief in slices this long and checks search.json between them.
WORKER_WAIT_SLICE_SECONDS = 2.0
# A never-reached limit: divergent trials fail one after another by design.
MAX_CONSECUTIVE_FAILURES = 10**9
DEFAULT_INITIAL_POINTS = 3
LEDGER = "ledger.jsonl"
# The tuner id under which a rerun replays the ledger into a fresh oracle.
REPLAY_ID = "ledger-replay"
TOKEN_ENV = "KERAS_VITBN_TUNER_TOKEN"
TOKEN_METADATA = "x-keras-vitbn-token"
MIN_TOKEN_CHARS = 16
ALL_INTERFACES = ("0.0.0.0", "::", "[::]", "*", "")


# --------------------------------------------------------------------------- distributed mode


def distributed_role():
    """ "single", "chief" or "worker", from keras-tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(name):
            raise ValueError(f"KERASTUNER_ORACLE_IP is set but {name} is not: set both for a distributed search")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def _oracle_address():
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def tuner_token():
    """The shared secret of a distributed search, from `KERAS_VITBN_TUNER_TOKEN`; ValueError when unset or short."""
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"a distributed search needs the same secret of at least {MIN_TOKEN_CHARS} characters in {TOKEN_ENV} "
            f"on the chief and every worker ({'it is shorter' if token else 'it is not set'}): e.g. "
            f"export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_hex(16))')"
        )
    return token


def check_chief_address(allow_all_interfaces=False):
    """Refuses a chief address that listens on every interface (0.0.0.0, ::) unless allowed explicitly."""
    ip = os.environ["KERASTUNER_ORACLE_IP"].strip()
    if ip in ALL_INTERFACES and not allow_all_interfaces:
        raise ValueError(
            f"KERASTUNER_ORACLE_IP={ip!r} makes the chief listen on every network interface: give the address "
            "the workers reach it at (e.g. 10.0.0.1, or 127.0.0.1 on one machine), or pass --allow-all-interfaces"
        )


class _TokenCheck(grpc.ServerInterceptor):
    """Lets through only the calls whose metadata carries the search's token; the others get UNAUTHENTICATED."""

    def __init__(self, token):
        self._token = token.encode()

        def refuse(request, context):
            say(f"chief: refused a call without the right {TOKEN_ENV} from {context.peer()}")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {TOKEN_ENV}")

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        given = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_METADATA, "")
        if hmac.compare_digest(given.encode(), self._token):  # constant time: no timing oracle on the token
            return continuation(handler_call_details)
        return self._refuse


class _TokenMetadata(grpc.UnaryUnaryClientInterceptor):
    """Adds the search's token to the metadata of every call (the oracle's calls are all unary)."""

    def __init__(self, token):
        self._metadata = ((TOKEN_METADATA, token),)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = (*(client_call_details.metadata or ()), *self._metadata)
        return continuation(client_call_details._replace(metadata=metadata), request)


def oracle_channel(token=None, address=None):
    """A gRPC channel to the chief whose calls carry `token` (default: `tuner_token()`)."""
    token = tuner_token() if token is None else token
    return grpc.intercept_channel(grpc.insecure_channel(address or _oracle_address()), _TokenMetadata(token))


def serve_oracle(oracle, poll=CHIEF_POLL_SECONDS):
    """Serves `oracle` to the workers with keras-tuner's gRPC servicer until its search is over.

    keras-tuner's own `oracle_chief.start_server` polls every 20 s once the
    search is over and never stops its server; a search of many cells serves
    one oracle after another on the same port, so this one polls faster and
    stops its server before the next cell's starts. It also answers only calls
    that carry `tuner_token()` (`_TokenCheck`).
    """
    from concurrent import futures

    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1),
        options=[("grpc.so_reuseport", 0)],
        interceptors=[_TokenCheck(tuner_token())],
    )
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = _oracle_address()
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"the chief cannot listen on {address}: {error}") from None
    if not port:
        raise RuntimeError(f"the chief cannot listen on {address} (port in use?)")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll)
    finally:
        server.stop(grace=2).wait()


def served_cell(timeout, search_finished=lambda: False):
    """The cell whose oracle the chief serves now, or None once `search_finished()`.

    Waits for a server up to `timeout` s in all. Between cells, and after the
    last one, the chief serves nothing; the chief marks the end of the search in
    the shared search.json, which `search_finished` reads, so a worker that
    arrives (or comes back) after the chief has finished stops instead of
    waiting for a server that will never come.
    """
    from keras_tuner.src import protos

    token = tuner_token()
    deadline = time.monotonic() + timeout
    retry = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    while True:
        if search_finished():
            return None
        wait = min(WORKER_WAIT_SLICE_SECONDS, deadline - time.monotonic())
        channel = oracle_channel(token)
        try:
            stub = protos.get_service_grpc().OracleStub(channel)
            response = stub.GetSpace(
                protos.get_service().GetSpaceRequest(), wait_for_ready=True, timeout=max(wait, 0.1)
            )
            break
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ValueError(
                    f"the chief at {_oracle_address()} refused this worker's token: give the chief and every "
                    f"worker the same {TOKEN_ENV}"
                ) from None
            if error.code() not in retry or time.monotonic() >= deadline:
                if search_finished():
                    return None
                raise RuntimeError(
                    f"no chief answered at {_oracle_address()} within {timeout:.0f} s ({error.code().name}): start "
                    "the chief (KERASTUNER_TUNER_ID=chief) with the same command, or raise --chief-timeout"
                ) from None
        finally:
            channel.close()
    hps = kt.HyperParameters.from_proto(response.hyperparameters)
    return hps.values.get("cell")


# --------------------------------------------------------------------------- keras-tuner parts


class LearningRateHyperModel(kt.HyperModel):
    """One (model, depth) cell: builds the model at a tuned learning rate and trains it.

    Args:
        config: SearchConfig.
        model_name: str. Registry name of the model.
        depth: int. Encoder depth (ViT) or number of hidden layers (DNN).
        image_shape: tuple. (height, width, channels) of the data.
        num_classes: int.
        steps_per_epoch: int. For learning-rate schedules.

    Example:
    >>> hypermodel = LearningRateHyperModel(SearchConfig(), "vit_bnffn", 3, (28, 28, 1), 10, 540)
    >>> model = hypermodel.build(kt.HyperParameters())
    """

    def __init__(self, config, model_name, depth, image_shape, num_classes, steps_per_epoch):
        super().__init__(name=cell_name(model_name, depth))
        self.config = config
        self.model_name = model_name
        self.depth = depth
        self.image_shape = tuple(image_shape)
        self.num_classes = int(num_classes)
        self.steps_per_epoch = int(steps_per_epoch)

    def declare_learning_rate(self, hp):
        if self.config.tuner == "grid":
            return hp.Choice(LR, values=list(self.config.grid()), ordered=True)
        return hp.Float(LR, min_value=self.config.lr_min, max_value=self.config.lr_max, sampling="log")

    def build(self, hp):
        learning_rate = self.declare_learning_rate(hp)
        hp.Fixed("cell", cell_name(self.model_name, self.depth))
        hp.Fixed("model", self.model_name)
        hp.Fixed("depth", self.depth)
        train = self.config.train
        config = type(train).from_dict(
            {**train.to_dict(), "model": self.model_name, "depth": self.depth, "learning_rate": learning_rate}
        )
        # Same initial weights at every learning rate of a cell: only the lr differs between its trials.
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, self.image_shape, self.num_classes)
        return compile_model(model, config, self.steps_per_epoch)

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """Trains; returns the last epoch's metrics, or raises `FailedTrialError` if training diverged."""
        guard = training_callbacks.DivergenceGuard()
        kwargs.setdefault("shuffle", False)  # the tf.data pipeline shuffles with the run's seed
        if args:
            kwargs.setdefault("steps_per_epoch", datasets.epoch_steps(args[0]))  # as the trainers do
        history = model.fit(*args, callbacks=[guard, *(callbacks or [])], **kwargs)
        if guard.reason is not None:
            raise kt.errors.FailedTrialError(f"diverged: {guard.reason}")
        last = {name: float(values[-1]) for name, values in history.history.items() if values}
        for name in (OBJECTIVE, "val_loss"):
            if name not in last:
                raise kt.errors.FailedTrialError(f"no {name} after training: the search needs validation data")
            if not math.isfinite(last[name]):
                raise kt.errors.FailedTrialError(f"diverged: {name} is {last[name]} after the last epoch")
        return last


def _sort_tried_so_far(oracle):
    """Saves the oracle's `tried_so_far` (a set) sorted, so a resume that adds no trial rewrites the same oracle.json.

    A set's order follows the process's hash seed: unsorted, every resume
    reordered the list in each cell's committed oracle.json.
    """
    get_state = oracle.get_state

    def sorted_state():
        state = get_state()
        state["tried_so_far"] = sorted(state["tried_so_far"])
        return state

    oracle.get_state = sorted_state


class LearningRateTuner(kt.Tuner):
    """A `kt.Tuner` that keeps each trial's model as `.keras` and its outcome as JSON.

    Besides keras-tuner's own records, each trial directory gets `outcome.json`
    (status, failure reason, last-epoch metrics, history: it reaches the chief in
    a distributed search, where keras-tuner does not send failure messages),
    `events.jsonl` (one line per start and end of the trial, with the tuner id
    and process id) and, when it completed, `model.keras` (its last epoch, the
    weights the objective was measured on). A chief serves its oracle instead
    of searching (`serve_oracle`).
    """

    def __init__(self, oracle, hypermodel, directory, project_name, **kwargs):
        super().__init__(oracle, hypermodel, directory=directory, project_name=project_name, overwrite=False, **kwargs)
        if distributed_role() == "worker":
            # keras-tuner's client calls the chief over a plain channel: give its calls the token.
            from keras_tuner.src import protos

            self.oracle.stub = protos.get_service_grpc().OracleStub(oracle_channel())
            return
        self.ledger_path = os.path.join(self.project_dir, LEDGER)
        _sort_tried_so_far(self.oracle)
        self._end_trial_unrecorded = self.oracle.end_trial
        if os.path.exists(self.ledger_path):
            self._replay_ledger()
        elif os.path.exists(os.path.join(self.project_dir, "oracle.json")):
            self._reload_without_ledger()
        self.oracle.end_trial = self._end_and_record

    def reload(self):
        """keras-tuner calls this when the project has a state file of this tuner id: the ledger replaces it.

        keras-tuner would reload the oracle from `oracle.json`; `__init__`
        rebuilds it from the ledger instead, starting from the fresh oracle's
        search space, which is what keras-tuner builds when it does not reload.
        """
        self._populate_initial_space()

    def _replay_ledger(self):
        """Puts the fresh oracle in the state of an uninterrupted search that finished the ledger's trials.

        The oracle proposes each recorded trial again (in trial-id order: the
        order a single machine creates and ends them) and is told its recorded
        result. A trial id missing from the ledger was running when the search
        stopped (several at once in a distributed search): it goes to the
        oracle's retry queue and is trained again under the same id and values.
        """
        oracle = self.oracle
        ledger = read_ledger(self.ledger_path)
        try:
            saved = read_json(os.path.join(self.project_dir, "oracle.json")) or {}
        except ValueError:  # the ledger, not oracle.json, is the record
            saved = {}
        verbose, oracle.verbose = oracle.verbose, 0
        try:
            for number in range(max(ledger) + 1):
                trial = oracle.create_trial(REPLAY_ID)
                if trial.status != kt.engine.trial.TrialStatus.RUNNING:
                    say(
                        f"{self.project_name}: the oracle stops after {number} trials; later ledger lines are "
                        "left out (fewer trials than before?)"
                    )
                    break
                entry = ledger.get(int(trial.trial_id))
                if entry is None:  # running still, as it was then, until the replay ends
                    oracle.ongoing_trials[f"{REPLAY_ID}-{trial.trial_id}"] = oracle.ongoing_trials.pop(REPLAY_ID)
                    continue
                if trial.hyperparameters.values != entry["values"]:
                    # A distributed search creates trials while others run, a replay one after another:
                    # what the ledger says ran is what counts.
                    trial.hyperparameters.values = dict(entry["values"])
                    oracle._record_values(trial)
                if entry["metrics"]:
                    oracle.update_trial(trial.trial_id, entry["metrics"], step=entry.get("step", 0))
                trial.status = entry["status"]
                trial.message = entry.get("message")
                self._end_trial_unrecorded(trial)
        finally:
            for tuner_id in [t for t in oracle.ongoing_trials if t.startswith(REPLAY_ID)]:
                trial = oracle.ongoing_trials.pop(tuner_id)
                if tuner_id != REPLAY_ID:
                    oracle._retry_queue.append(trial.trial_id)
            oracle.tuner_ids.discard(REPLAY_ID)
            oracle.verbose = verbose
        if "display" in saved:  # the replay showed nothing: keep the search's own start times and numbers
            oracle._display.set_state(saved["display"])
        oracle.save()
        pending = len(oracle._retry_queue)
        say(
            f"{self.project_name}: {len(ledger)} finished trials replayed from {LEDGER}"
            + (f", {pending} interrupted to run again" if pending else "")
        )

    def _reload_without_ledger(self):
        """A search begun before the ledger existed: keras-tuner's reload, then a ledger from its trials."""
        self.oracle.reload()
        if distributed_role() == "single":
            # Trials left running by other tuner ids (workers of a distributed search stopped for
            # good) would otherwise never finish: run them again here first.
            for tuner_id, trial in list(self.oracle.ongoing_trials.items()):
                if tuner_id != self.tuner_id:
                    self.oracle.ongoing_trials.pop(tuner_id)
                    self.oracle._retry_queue.append(trial.trial_id)
        for trial_id in self.oracle.end_order:
            self._record(self.oracle.trials[trial_id])

    def _end_and_record(self, trial):
        """The oracle's `end_trial`, then one ledger line once the trial is finished for good.

        Called by this tuner after `run_trial` returned (a single machine) or by
        the chief's gRPC server when a worker reports the end of a trial: the
        trial's files (model, outcome) are saved by then.
        """
        self._end_trial_unrecorded(trial)
        self._record(self.oracle.trials[trial.trial_id])

    def _record(self, trial):
        status = kt.engine.trial.TrialStatus
        if trial.status not in (status.COMPLETED, status.FAILED):
            return  # INVALID: keras-tuner retries it
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        append_ledger(
            self.ledger_path,
            {
                "trial_id": trial.trial_id,
                "values": trial.hyperparameters.values,
                "status": trial.status,
                "metrics": {k: float(v) for k, v in metrics.items() if v is not None},
                "step": int(trial.best_step or 0),
                "message": trial.message,
                "seed": self.hypermodel.config.train.seed,
                "time": time.time(),
            },
        )

    def is_finished(self):
        """Whether the oracle has nothing left to run (chief or single machine)."""
        oracle = self.oracle
        if oracle.ongoing_trials or oracle._retry_queue:
            return False
        return oracle.max_trials is not None and len(oracle.trials) >= oracle.max_trials

    def search(self, *fit_args, **fit_kwargs):
        if distributed_role() == "chief":
            if "verbose" in fit_kwargs:
                self.oracle.verbose = fit_kwargs["verbose"]
            self.save()
            if not self.is_finished():
                serve_oracle(self.oracle)
            return
        if distributed_role() == "worker":
            self._only_own_cell()
        super().search(*fit_args, **fit_kwargs)

    def _only_own_cell(self):
        """Ends this worker's cell when the chief answers with another cell's trial.

        The chief may stop this cell's server and start the next one's between a
        worker's last look (`served_cell`) and its request for a trial; the next
        oracle then hands this tuner a trial of its own cell, which this tuner
        would train with the wrong model. Treat it as the end of this cell: the
        trial stays assigned to this tuner id, and the next cell's tuner gets it
        back from the oracle (keras-tuner returns a tuner's ongoing trial first).
        """
        create_trial = self.oracle.create_trial
        cell = self.hypermodel.name

        def create_own_trial(tuner_id):
            trial = create_trial(tuner_id)
            other = trial.hyperparameters.values.get("cell")
            if trial.status == kt.engine.trial.TrialStatus.RUNNING and other != cell:
                say(f"worker {tuner_id}: the chief serves {other} now; {cell} is finished")
                trial.status = kt.engine.trial.TrialStatus.STOPPED
            return trial

        self.oracle.create_trial = create_own_trial

    def _event(self, trial_dir, event, **fields):
        line = {
            "event": event,
            "tuner_id": self.tuner_id,
            "pid": os.getpid(),
            "time": time.time(),
            **fields,
        }
        with open(os.path.join(trial_dir, "events.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    def run_trial(self, trial, *args, **kwargs):
        if args and callable(args[0]):  # a factory of the training pipeline (see `search`): a fresh one per trial
            args = (args[0](), *args[1:])
        hp = trial.hyperparameters
        trial_dir = self.get_trial_dir(trial.trial_id)
        learning_rate = hp.get(LR)
        outcome = {
            "trial_id": trial.trial_id,
            "model": hp.get("model"),
            "depth": hp.get("depth"),
            "learning_rate": learning_rate,
            "tuner_id": self.tuner_id,
            "backend": keras.backend.backend(),
            "machine": machine_info(),
        }
        self._event(trial_dir, "start", learning_rate=learning_rate)
        self._say_progress(trial, outcome, "training")
        start = time.perf_counter()
        model = None
        try:
            model = self._try_build(hp)
            metrics = self.hypermodel.fit(hp, model, *args, **kwargs)
        except kt.errors.FailedTrialError as error:  # diverged: a result, recorded, and the search goes on
            reason = str(error)
            history = getattr(getattr(model, "history", None), "history", None)
            outcome.update(
                status="failed", reason=reason, seconds=time.perf_counter() - start, history=_history_rows(history)
            )
            write_json(os.path.join(trial_dir, "outcome.json"), outcome)
            self._event(trial_dir, "end", status="failed", reason=reason)
            say(
                f"trial {trial.trial_id} of {outcome['model']} d{outcome['depth']} at lr {learning_rate:.3g} "
                f"failed: {reason}"
            )
            self._say_progress(trial, outcome, "failed", time.perf_counter() - start)
            raise
        except Exception as error:
            # Anything else (bad data, a bug, out of memory) stops the search instead of quietly failing
            # every trial; the trial stays unfinished and runs again when the search is rerun.
            self._event(trial_dir, "error", reason=f"{type(error).__name__}: {error}")
            raise kt.errors.FatalError(
                f"trial {trial.trial_id} of {outcome['model']} d{outcome['depth']} at lr {learning_rate:.3g} "
                f"raised {type(error).__name__}: {error}"
            ) from error
        model.save(os.path.join(trial_dir, "model.keras"))
        outcome.update(
            status="completed",
            reason=None,
            seconds=time.perf_counter() - start,
            metrics=metrics,
            history=_history_rows(model.history.history),
        )
        write_json(os.path.join(trial_dir, "outcome.json"), outcome)
        self._event(trial_dir, "end", status="completed", **{OBJECTIVE: metrics[OBJECTIVE]})
        self._say_progress(trial, outcome, f"{OBJECTIVE} {format_percent(metrics[OBJECTIVE])}", outcome["seconds"])
        return metrics

    # Set by `search` on a single machine: the running count over every cell's trials.
    progress = None

    def _say_progress(self, trial, outcome, what, seconds=None):
        """'trial 3 of vit d2 at lr 0.003: training (2/12 done, 4.0 min elapsed, about 20 min left)'."""
        if self.progress is None:
            return
        if seconds is not None:
            self.progress.finish(seconds)
        say(
            f"trial {trial.trial_id} of {outcome['model']} d{outcome['depth']} at lr "
            f"{outcome['learning_rate']:.3g}: {what} ({self.progress.line()})"
        )


def read_ledger(path):
    """{trial number: ledger line} of a cell's ledger; a half-written last line (a kill while appending) is skipped."""
    entries = {}
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if i >= len(lines) - 2:  # the last line, cut short
                break
            raise ValueError(f"{path} line {i + 1} is damaged: move the file away to search its cell again") from None
        entries[int(entry["trial_id"])] = entry
    return entries


def append_ledger(path, entry):
    """Appends one line and syncs it; a half-written last line left by a kill is dropped first."""
    append_jsonl(path, entry)


def _history_rows(history):
    if not history:
        return []
    epochs = max(len(v) for v in history.values())
    rows = []
    for i in range(epochs):
        row = {"epoch": i + 1}
        for name, values in history.items():
            if i < len(values):
                value = float(values[i])
                row[name] = value if math.isfinite(value) else None
        rows.append(row)
    return rows


def training_pipeline(train, split):
    """A fresh training pipeline of `split`: shuffled and augmented from the seed, whatever ran before.

    A `tf.data` pipeline draws a new shuffle order (and augmentation) at every
    pass, so the trials of a cell sharing one would each see other data; each
    trial gets its own, and a trial rerun after a kill sees the same data.
    """
    augment = augment_lib.augmentation(train.augment, seed=train.seed, **train.augment_options)
    return datasets.make_pipeline(split, train.batch_size, shuffle=True, seed=train.seed, augment=augment)


def make_oracle(config):
    """The keras-tuner oracle of one cell: Bayesian optimisation, random or grid search."""
    common = {
        "objective": kt.Objective(OBJECTIVE, direction="max"),
        "max_trials": config.max_trials(),
        # keras-tuner draws a random seed when given 0; every cell gets the same seed, so random
        # search (and Bayesian optimisation's initial points) tries the same rates at every depth.
        "seed": config.train.seed + 1,
        "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILURES,
    }
    if config.tuner == "bayesian":
        # keras-tuner's default, 3 x the number of hyperparameters, counts the fixed ones (cell, model,
        # depth) too: 12 random trials before the first Bayesian one. The learning rate is the one
        # dimension searched, so 3.
        initial = config.initial_points or DEFAULT_INITIAL_POINTS
        return kt.oracles.BayesianOptimizationOracle(num_initial_points=initial, **common)
    if config.tuner == "random":
        return kt.oracles.RandomSearchOracle(**common)
    return kt.oracles.GridSearchOracle(**common)


def make_tuner(config, model_name, depth, provenance, output_dir):
    steps = math.ceil(provenance["train_images"] / config.train.batch_size)
    hypermodel = LearningRateHyperModel(
        config, model_name, depth, provenance["image_shape"], provenance["num_classes"], steps
    )
    return LearningRateTuner(
        make_oracle(config),
        hypermodel,
        directory=os.path.join(output_dir, "kt"),
        project_name=cell_name(model_name, depth),
    )


# --------------------------------------------------------------------------- the driver


def _environment():
    import keras_tuner
    import numpy
    import tensorflow as tf

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_tuner": keras_tuner.__version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
    }


def _check_or_write_config(config, output_dir, role, command, provenance):
    path = os.path.join(output_dir, "search.json")
    previous = read_json(path)
    backend = keras.backend.backend()
    if previous is not None:
        old = SearchConfig.from_dict(previous["config"])
        changed = sorted(k for k, v in config.search_key().items() if old.search_key().get(k) != v)
        if changed == ["train"]:
            changed = sorted(
                f"train.{k}" for k, v in config.search_key()["train"].items() if old.search_key()["train"].get(k) != v
            )
        if previous.get("environment", {}).get("backend") != backend:
            changed.append(f"backend ({previous.get('environment', {}).get('backend')} before)")
        if changed:
            raise ValueError(
                f"{output_dir} holds a different search (differs in {', '.join(changed)}): choose another "
                "--output-dir, or pass --overwrite to replace it"
            )
    if role == "worker":
        return
    write_json(
        path,
        {
            "config": config.to_dict(),
            "cells": [cell_name(m, d) for m, d in config.cells()],
            "max_trials_per_cell": config.max_trials(),
            "objective": f"{OBJECTIVE} at the last epoch (validation split of the training data)",
            "data": {k: v for k, v in provenance.items() if k != "notes"},
            "environment": _environment(),
            "command": command,
        },
    )


@contextlib.contextmanager
def cell_devices(config, model_name, depth, provenance, output_dir=None):
    """Trains the cell's trials data parallel where the trainers would (`auto_distribute.choose`).

    Yields the reason of the choice; records it under "devices" in
    search.json when `output_dir` is given (the chief or a single machine).
    The validation split is evaluated with the search's one pipeline, so the
    choice also needs its size to split evenly (`choose` checks it).
    """
    train = type(config.train).from_dict({**config.train.to_dict(), "model": model_name, "depth": depth})
    mode, why = auto_distribute.choose(train, provenance["train_images"], [provenance["val_images"]])
    if output_dir is not None:
        path = os.path.join(output_dir, "search.json")
        record = read_json(path)
        record.setdefault("devices", {})[cell_name(model_name, depth)] = why
        write_json(path, record)
    if mode is None:
        yield why
        return
    with distribute.distribution_scope(mode) as dist:
        say(f"{cell_name(model_name, depth)}: {dist.describe()} ({why})")
        yield why


def search_finished(output_dir):
    """Whether the chief (or a single machine) has searched every cell of the search in `output_dir`."""
    return bool((read_json(os.path.join(output_dir, "search.json")) or {}).get("searched_at"))


def _mark_searched(output_dir):
    path = os.path.join(output_dir, "search.json")
    write_json(path, {**read_json(path), "searched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _worker_loop(config, provenance, output_dir, fit_args, fit_kwargs, chief_timeout):
    cells = config.cells()
    names = [cell_name(m, d) for m, d in cells]
    i = 0
    tuner = None
    while i < len(cells):
        if tuner is None:
            tuner = make_tuner(config, *cells[i], provenance, output_dir)
        served = served_cell(chief_timeout, lambda: search_finished(output_dir))
        if served is None:
            say(f"worker {os.environ['KERASTUNER_TUNER_ID']}: the chief has finished the search")
            return
        if served not in names:
            raise RuntimeError(
                f"the chief at {_oracle_address()} serves cell {served!r}, which this search does not have "
                f"({', '.join(names)}): run the same command on the chief and on every worker"
            )
        j = names.index(served)
        if j < i:  # the chief is still finishing the previous cell
            time.sleep(WORKER_POLL_SECONDS)
            continue
        if j > i:  # the chief has moved on: cells before j are finished
            i, tuner = j, None
            continue
        say(f"worker {os.environ['KERASTUNER_TUNER_ID']}: searching {names[i]} ({i + 1}/{len(cells)})")
        with cell_devices(config, *cells[i], provenance):
            tuner.search(*fit_args, **fit_kwargs)
        i, tuner = i + 1, None


def search(
    config,
    overwrite=False,
    verbose="auto",
    command=None,
    chief_timeout=3600.0,
    report=True,
    callbacks=None,
    allow_all_interfaces=False,
):
    """Runs (or resumes) the search and writes its directory; see the module docstring.

    Args:
        config: SearchConfig.
        overwrite: bool. Delete the search directory first (never on a worker).
        verbose: "auto", 0, 1 or 2. Keras progress output of each trial.
        command: str or None. The command line, recorded in search.json.
        chief_timeout: float. How long a worker waits for the chief's oracle.
        report: bool. Write the results (tables, plots, best models) at the end.
        callbacks: list or None. Extra Keras callbacks for every trial's `fit`.
        allow_all_interfaces: bool. Let a chief listen on 0.0.0.0 or :: (every
            network interface); refused otherwise.

    Returns:
        dict with "output_dir", "role", "seconds" and, on a chief or a single
        machine, "results" (one dict per cell) and "trials" (one per trial).

    Example:
    >>> train = TrainConfig(dataset="fashion_mnist", data_dir="../shared/data/fashion-mnist",
    ...                     augment="none", validation_split=0.1, epochs=2, train_subset=5000)
    >>> summary = search(SearchConfig(train, depths=(1, 2, 3), trials=4))
    """
    if isinstance(config, dict):
        config = SearchConfig.from_dict(config)
    role = distributed_role()
    if role != "single":  # before anything is written or loaded
        tuner_token()
        if role == "chief":
            check_chief_address(allow_all_interfaces)
    if not config.output_dir:
        config = SearchConfig.from_dict({**config.to_dict(), "output_dir": config.default_output_dir()})
    output_dir = config.output_dir
    # Locked for this process (a worker shares its chief's folder, and neither locks nor clears it);
    # with `overwrite`, emptied only once the data have loaded.
    worker = role == "worker"
    with run_folder(
        output_dir, "search", overwrite=overwrite and not worker, command=command, lock=not worker
    ) as folder:
        return _search_in_folder(folder, config, role, verbose, command, chief_timeout, report, callbacks)


def _search_in_folder(folder, config, role, verbose, command, chief_timeout, report, callbacks):
    output_dir = folder.path
    start = time.perf_counter()
    splits = run_splits(config.train)
    _, val_ds, test_ds, test_aug_ds, provenance = load_data(config.train, splits=splits)
    if provenance.get("warning"):
        say(f"WARNING: {provenance['warning']}")
    folder.clear()  # --overwrite: the new search has validated, the old one goes
    _check_or_write_config(config, output_dir, role, command, provenance)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    fit_args = (functools.partial(training_pipeline, config.train, splits[0]),)
    fit_kwargs = {
        "validation_data": val_ds,
        "epochs": config.train.epochs,
        "verbose": verbose,
        "callbacks": list(callbacks or []),
    }
    cells = config.cells()
    say(
        f"{role}: searching the learning rate of {len(cells)} cells ({', '.join(config.models)} x depths "
        f"{', '.join(map(str, config.depths))}) with the {config.tuner} tuner, {config.max_trials()} trials each, "
        f"lr in [{config.lr_bounds()[0]:g}, {config.lr_bounds()[1]:g}], on {config.train.dataset} "
        f"[{provenance['train_images']:,} train, {provenance['val_images']:,} val, {provenance['test_images']:,} "
        f"test images], backend {keras.backend.backend()}; writing {output_dir}"
    )
    if role == "worker":
        _worker_loop(config, provenance, output_dir, fit_args, fit_kwargs, chief_timeout)
        say(f"worker {os.environ['KERASTUNER_TUNER_ID']}: done in {time.perf_counter() - start:.0f} s")
        return {"output_dir": output_dir, "role": role, "seconds": time.perf_counter() - start}

    progress = Progress(len(cells) * config.max_trials()) if role == "single" else None
    for i, (model_name, depth) in enumerate(cells):
        tuner = make_tuner(config, model_name, depth, provenance, output_dir)
        if progress is not None:  # trials finished before this process started count as done, untimed
            tuner.progress = progress
            progress.skip(sum(t.status in FINISHED for t in tuner.oracle.trials.values()))
        say(
            f"{cell_name(model_name, depth)} ({i + 1}/{len(cells)}): {len(tuner.oracle.trials)} trials recorded"
            f"{', serving it to the workers' if role == 'chief' else ''}"
        )
        with cell_devices(config, model_name, depth, provenance, output_dir):
            tuner.search(*fit_args, **fit_kwargs)
    _mark_searched(output_dir)
    seconds = time.perf_counter() - start
    summary = {"output_dir": output_dir, "role": role, "seconds": seconds}
    if report:
        summary.update(report_lib.write_report(config, test_ds, test_aug_ds))
    return summary
