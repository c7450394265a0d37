"""The FedSM server workflow: per round, send each client its own models, stream the results into the
aggregator, track the best models, persist the next model set; validate the final models at the end.

It is a plain `Controller`, not NVFlare 2.9's `ModelController`: `send_model` could address each site
with its own model, but an `FLModel` is converted to one DXO of one `params_type`, while a FedSM
message is a collection of parts of different kinds (weights, a weight difference, Adam moments,
metrics) so that stock filters act on each part as on a model of that kind (`messages`).
`ModelController` would also decode every result into an `FLModel` before our checks, where this
workflow decodes each reply once, checks it, and streams it into the round's sums.
"""

import dataclasses
import threading
import time
from pathlib import Path

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, SendOrder, Task
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from ..core.best_models import BEST_MODEL_RULES, improved_models, mean_metric
from ..core.label_mapping import check_label_mapping
from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from ..core.model_set import ModelSet
from ..core.robust import (InfluenceBounds, bounded_claims, exceeds_run_scale, has_content, missing_arrays,
                           nonfinite_arrays, part_norms, screen_round)
from ..core.update_checks import shapes_of
from ..evaluation import DEFAULT_THRESHOLD
from ..io.background_writes import BackgroundWrites
from ..io.checkpoint import CheckpointError
from ..job_config import check_packaged_code
from ..ops.heap import release_free_heap
from ..selector_training import selector_training
from ..tags import GLOBAL_METRIC, SELECTOR_CONFIDENCE, SELECTOR_METRIC
from .aggregator import FedSMAggregator
from .dxo_codec import MessageError
from .federated_evaluation import BestWeights, FederatedEvaluation
from .messages import START_ERROR_HEADER, FedSMTask, FedSMUpdate, update_shapes
from .persistor import FedSMModelPersistor
from .round_costs import AGGREGATE_KEY, PARTS_KEY, ROUND_FINISHED, ROUND_KEY, ROUND_STARTED, WALL_KEY
from .update_spool import receiving_cells, spool_updates_to_disk


class FedSMController(Controller):
    def __init__(
        self,
        num_rounds: int = 100,
        client_id_label_mapping: dict | None = None,
        aggregator_id: str = "aggregator",
        persistor_id: str = "persistor",
        train_task_name: str = "train",
        validate_task_name: str = "validate",
        parallel_tasks: bool = True,
        train_timeout: int = 1800,
        min_clients: int | None = None,
        validate_final_models: bool = True,
        tensor_disk_offload: bool = True,
        max_steps_ratio: float = 3.0,
        max_norm_ratio: float = 10.0,
        max_steps: dict | None = None,
        best_model_rule: str = "median",
        checkpoint_timeout: float = 600.0,
        federated_evaluation: bool = True,
        select_threshold: float = DEFAULT_THRESHOLD,
        evaluate_task_name: str = "evaluate",
    ):
        """
        Args:
            num_rounds: rounds of the whole run (a resumed run continues up to this number).
            client_id_label_mapping: client name -> selector label (0..K-1).
            parallel_tasks: send the round's tasks to all clients at once (else one client after another).
            train_timeout: seconds a client may take for a task (0: no limit); a client that stays
                connected but never answers then costs one round this long, not the run.
            min_clients: fewest valid updates a round needs; fewer stops the run. None: the job's
                `meta.json` `min_clients` (the two must agree; the run stops at start if they differ).
            validate_final_models: after the last round, have every client validate the final models.
            tensor_disk_offload: the server writes incoming client updates to temporary files as they
                arrive and reads each one back while aggregating it (NVFlare's tensor disk offload),
                so that concurrent uploads of large updates do not all sit in memory at once. Must be
                false where the server has task result filters, which need the arrays in memory
                (`FedSMRecipe.add_server_input_filter` sees to it).
            max_steps_ratio: a site's aggregation weight (its local steps) is at most this times the
                round's lower median claim or the claims' scale over the run (0: no such bound).
            max_norm_ratio: a site whose update part (global difference, personalized change, selector
                update, Adam moments) has a norm over this times the part's reference is left out of
                the round (0: off). See `fedsm.core.robust`.
            max_steps: site name -> most local steps its update may weigh.
            best_model_rule: `median` (default) or `reference` (as published); see `fedsm.core.best_models`.
            checkpoint_timeout: seconds a checkpoint write may take before the run stops naming it.
            federated_evaluation: after the last round, every site scores the best models on its own
                test split (`federated_evaluation`); the server writes `test_results.json`.
            select_threshold: the super model's routing threshold in that evaluation.
        """
        super().__init__()
        self.num_rounds = num_rounds
        self.client_id_label_mapping = client_id_label_mapping  # as given, for FedJob to write the job's config
        self.labels = dict(client_id_label_mapping or {})
        self.aggregator_id = aggregator_id
        self.persistor_id = persistor_id
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.parallel_tasks = parallel_tasks
        self.train_timeout = train_timeout
        self.min_clients = min_clients
        self.validate_final_models = validate_final_models
        self.tensor_disk_offload = tensor_disk_offload
        # the arguments as given too, for FedJob to write the job's config
        self.max_steps_ratio, self.max_norm_ratio, self.max_steps = max_steps_ratio, max_norm_ratio, max_steps
        self.best_model_rule = best_model_rule
        self.bounds = InfluenceBounds(steps_ratio=max_steps_ratio, norm_ratio=max_norm_ratio,
                                      max_steps=dict(max_steps or {}))
        if best_model_rule not in BEST_MODEL_RULES:
            raise ValueError(f"best_model_rule must be one of {sorted(BEST_MODEL_RULES)}, got {best_model_rule!r}")
        self.best_rule = BEST_MODEL_RULES[best_model_rule]
        self.checkpoint_timeout = checkpoint_timeout
        self.federated_evaluation = federated_evaluation
        self.select_threshold = select_threshold
        self.evaluate_task_name = evaluate_task_name
        self._evaluation = FederatedEvaluation(self, evaluate_task_name, select_threshold, train_timeout)
        self._held: dict[str, FedSMUpdate] = {}  # updates over the run's scale, until the round closes
        self._claims: dict[str, tuple[int, dict[str, float]]] = {}  # per site: its steps and part norms
        self._streamed: dict[str, float] = {}  # sites aggregated on arrival, and the weight they got
        self._current: ModelSet | None = None
        self._lock = threading.Lock()  # one lock around accepting, tracking the best models and aggregating
        self._round_open = False
        self._task_round = -1
        self._started = False
        self._update_shapes: dict = {}
        self._metrics: dict[str, dict[str, float]] = {}
        self._sizes: dict[str, int] = {}
        self._accept_seconds = 0.0  # the round's time spent on results as they arrived
        self._decode_seconds = 0.0  # the part of it spent decoding them
        self._tasks_handed = 0.0  # when the last task of the round went to NVFlare
        self._parts: dict[str, float] = {}  # seconds of the round's closing steps (`round_costs`)
        self._start_errors: dict[str, str] = {}  # client -> why it could not start (its data, its config)
        self._writes = BackgroundWrites(checkpoint_timeout)  # checkpoints, while the next round runs

    def start_controller(self, fl_ctx: FLContext):
        self._started = self._start(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> bool:
        """Find the components, check the code and config; False (after a system panic) when the run
        cannot start."""
        self.aggregator = self._engine.get_component(self.aggregator_id)
        self.persistor = self._engine.get_component(self.persistor_id)
        if not isinstance(self.aggregator, FedSMAggregator):
            self.system_panic(f"component '{self.aggregator_id}' must be a FedSMAggregator", fl_ctx)
            return False
        if not isinstance(self.persistor, FedSMModelPersistor):
            self.system_panic(f"component '{self.persistor_id}' must be a FedSMModelPersistor", fl_ctx)
            return False
        try:
            check_packaged_code(Path(__file__).resolve().parents[1])
        except RuntimeError as error:
            self.system_panic(str(error), fl_ctx)
            return False
        try:
            self.train_config = self.persistor.train_config(fl_ctx)
            self.labels = check_label_mapping(self.labels, self.train_config.select_num_classes)
        except ValueError as error:
            self.system_panic(f"FedSM configuration error: {error}", fl_ctx)
            return False
        self.mode = selector_training(self.train_config.selector_training)
        meta_min_clients = (fl_ctx.get_prop(FLContextKey.JOB_META) or {}).get("min_clients")
        if self.min_clients is None:
            self.min_clients = meta_min_clients or 1
        elif meta_min_clients is not None and meta_min_clients != self.min_clients:
            self.system_panic(f"min_clients is {self.min_clients} in config_fed_server.json but {meta_min_clients} "
                              "in meta.json; set one value in both", fl_ctx)
            return False
        return True

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext):
        if not self._started:
            return
        cells = receiving_cells(self._engine, fl_ctx.get_job_id()) if self.tensor_disk_offload else []
        with spool_updates_to_disk(cells, fl_ctx.get_job_id()) as folder:
            if self.tensor_disk_offload and folder is None:
                self.log_warning(fl_ctx, "tensor_disk_offload: no cell to configure; client updates stay in memory")
            try:
                self._run_rounds(abort_signal, fl_ctx)
            finally:
                self._finish_writes(fl_ctx)
                self._writes.shutdown()

    def _finish_writes(self, fl_ctx: FLContext) -> bool:
        """Wait for every checkpoint write; False (after a system panic naming the error) if one failed
        or hangs."""
        error = self._writes.wait()
        if error is not None:
            self.system_panic(f"cannot write a checkpoint: {error} (server app folder "
                              f"{fl_ctx.get_prop(FLContextKey.APP_ROOT) if fl_ctx else '?'})", fl_ctx)
        return error is None

    def _run_rounds(self, abort_signal: Signal, fl_ctx: FLContext):
        clients = self._participants(fl_ctx)
        if clients is None:
            return
        try:
            models = self.persistor.load(clients, fl_ctx)
        except (OSError, RuntimeError, ValueError) as error:
            self.system_panic(f"cannot load the FedSM model set: {error}", fl_ctx)
            return
        while models.next_round < self.num_rounds:
            round_number = models.next_round
            self.log_info(fl_ctx, f"Round {round_number} of {self.num_rounds} started ({len(clients)} clients).")
            self.fire_event(ROUND_STARTED, fl_ctx)
            started = time.monotonic()
            self._start_round(models, clients)
            self._run_tasks(self.train_task_name, models, clients, abort_signal, fl_ctx)
            if abort_signal.triggered:
                return
            results_in = time.monotonic()
            with self._lock:  # a late result is not accepted while the round is closed
                self._round_open = False
                models, contributors = self._close_round(models, fl_ctx)
            if models is None:
                return
            trimming = time.monotonic()
            release_free_heap()  # the round's accumulators and received updates, before the next tasks
            waiting = time.monotonic()
            self._parts["server_trim"] = waiting - trimming
            if not self._finish_writes(fl_ctx):  # the previous round's; at most one model set in flight
                return
            self._parts.update(write_wait=time.monotonic() - waiting, state_write=self._writes.written_seconds)
            self._writes.submit(self._save_state, _snapshot(models), fl_ctx)
            finished = time.monotonic()
            self.log_info(fl_ctx, f"Round {round_number} finished in {finished - started:.1f} s; "
                                  f"aggregated {sorted(contributors)}.")
            fl_ctx.set_prop(ROUND_KEY, round_number, private=True, sticky=False)
            fl_ctx.set_prop(WALL_KEY, finished - started, private=True, sticky=False)
            fl_ctx.set_prop(AGGREGATE_KEY, finished - results_in + self._accept_seconds, private=True, sticky=False)
            fl_ctx.set_prop(PARTS_KEY, {"tasks": self._tasks_handed - started, "server_decode": self._decode_seconds,
                                        "accept": self._accept_seconds - self._decode_seconds, **self._parts},
                            private=True, sticky=False)
            self.fire_event(ROUND_FINISHED, fl_ctx)
        if self.validate_final_models:
            self._run_tasks(self.validate_task_name, models, clients, abort_signal, fl_ctx)
            if not abort_signal.triggered:
                sizes = bounded_claims(self._sizes, self.bounds.steps_ratio)
                self._track_best(models, models.next_round, sizes, fl_ctx, final=True)
                self._writes.submit(self._save_state, _snapshot(models), fl_ctx)
        if self.federated_evaluation and not abort_signal.triggered and self._finish_writes(fl_ctx):
            self._evaluate(clients, fl_ctx, abort_signal)
        self.log_info(fl_ctx, "FedSM finished.")

    def _evaluate(self, clients: list[str], fl_ctx: FLContext, abort_signal: Signal) -> None:
        """The federated test evaluation of the best checkpoints just written."""
        try:
            best, without = BestWeights.load(Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)), self.labels)
        except CheckpointError as error:
            self.log_warning(fl_ctx, f"no federated test evaluation: {error}")
            return
        if without:
            self.log_warning(fl_ctx, f"{without} have no best personalized model; images routed to them are "
                                     "segmented by the global model")
        self._evaluation.run(best, self.labels, clients, fl_ctx, abort_signal)

    def _start_round(self, models: ModelSet, clients: list[str]) -> None:
        """Get the aggregator and the reply checks ready for a training round of `models`."""
        self.aggregator.start_round(models, {c: self.labels[c] for c in clients}, self.mode,
                                    self.train_config.learning_rate_select)
        self._update_shapes = update_shapes(shapes_of(models.global_model), self.mode.upload_shapes(models.selector))
        self._current, self._held, self._claims, self._streamed = models, {}, {}, {}

    def _open_tasks(self, round_number: int) -> None:
        """Start taking the replies to round `round_number`'s tasks."""
        self._metrics, self._sizes = {}, {}
        self._accept_seconds, self._decode_seconds, self._parts = 0.0, 0.0, {}
        self._round_open = True
        self._task_round = round_number

    def _take_update(self, client: str, update: FedSMUpdate, fl_ctx: FLContext) -> None:
        """An update on arrival: left out without content, held when over the bounds of the run's scale,
        else aggregated at once with its claimed weight (`core.robust`)."""
        norms = part_norms(update.global_diff, update.personalized,
                           self._current.personalized.get(client, self._current.global_model), update.selector)
        if not has_content(norms):
            self.log_warning(fl_ctx, f"update of {client} rejected in round {self._task_round}: no effective content "
                                     "(every part empty or zero)")
            return
        self._claims[client] = (update.steps, norms)
        over = exceeds_run_scale(update.steps, norms, self.bounds, self._current.norm_history)
        if over:
            self.log_info(fl_ctx, f"update of {client} held until the round closes: {over} is over the bound of "
                                  "the run's scale")
            self._held[client] = update
            return
        weight = min(update.steps, self.bounds.max_steps.get(client, update.steps))
        if self.aggregator.accept(client, update, weight, fl_ctx):
            self._streamed[client] = weight
        else:
            del self._claims[client]

    def _close_round(self, models: ModelSet, fl_ctx: FLContext) -> tuple[ModelSet | None, list[str]]:
        """Screen every update of the round (`core.robust`), aggregate the held ones that pass, track
        the best models on the metrics of the sites that count; the next model set and the
        contributors, or None (after a system panic) when fewer than `min_clients` count."""
        round_number = models.next_round
        held, self._held = self._held, {}
        screen = screen_round({c: steps for c, (steps, _) in self._claims.items()},
                              {c: norms for c, (_, norms) in self._claims.items()}, self.bounds, models.norm_history)
        if screen.references and self.bounds.norm_ratio > 0:
            self.log_info(fl_ctx, f"round {round_number} norm references (an update part over "
                                  f"{self.bounds.norm_ratio:g} x its reference leaves the site out): "
                                  f"{screen.describe_references()}")
        for client, reason in sorted({**screen.rejected, **screen.capped}.items()):
            self.log_warning(fl_ctx, f"update of {client} {'rejected ' if client in screen.rejected else ''}"
                                     f"in round {round_number}: {reason}")
        for client in sorted(set(held) & set(screen.weights)):
            self.aggregator.accept(client, held[client], screen.weights[client], fl_ctx)
        del held
        contributors = [c for c in self.aggregator.contributors if c in screen.weights]
        self._metrics = {client: self._metrics[client] for client in contributors}
        self._track_best(models, round_number, {c: screen.weights[c] for c in contributors}, fl_ctx)
        if len(contributors) < self.min_clients:
            self.system_panic(f"round {round_number}: {len(contributors)} valid client updates "
                              f"({contributors}), fewer than min_clients={self.min_clients}", fl_ctx)
            return None, contributors
        unbounded = sorted(c for c, weight in self._streamed.items() if screen.weights.get(c) != weight)
        if unbounded:
            self.aggregator.discard()
            self.log_error(fl_ctx, f"round {round_number} discarded: the updates of {unbounded} were aggregated on "
                                   "arrival, before the round's bounds were known, and fail them (above); the "
                                   "next round starts from the last good models and holds such updates")
            return self._discarded(models, screen.history), contributors
        return self._next_models(models, screen.history, fl_ctx), contributors

    def _next_models(self, current: ModelSet, norm_history: dict[str, list[float]], fl_ctx: FLContext) -> ModelSet:
        """The aggregated model set, or, when it holds NaN/Inf or lacks an array the next tasks need,
        `current` again for the next round (the round is discarded and the last good state kept)."""
        started = time.monotonic()
        models = self.aggregator.aggregate(fl_ctx)
        aggregated = time.monotonic()
        models.norm_history = norm_history
        problems = (("hold NaN/Inf in", nonfinite_arrays(models)),
                    ("lack or misshape", missing_arrays(models, current)))
        self._parts.update(next_set=aggregated - started, nan_check=time.monotonic() - aggregated)
        for problem, bad in problems:
            if bad:
                self.log_error(fl_ctx, f"round {current.next_round} discarded: the aggregated models {problem} "
                                       f"{bad[:5]}; the next round starts from the last good models")
                return self._discarded(current, norm_history)
        return models

    @staticmethod
    def _discarded(current: ModelSet, norm_history: dict[str, list[float]]) -> ModelSet:
        """The next round's model set when a round is discarded: the same models, its bounds learned."""
        return dataclasses.replace(current, next_round=current.next_round + 1, norm_history=norm_history)

    def _save_state(self, models: ModelSet, fl_ctx: FLContext) -> None:
        """Runs on the checkpoint thread; the log line tells that a restart can resume from this state."""
        path = self.persistor.save(models, fl_ctx)
        self.log_info(fl_ctx, f"saved {path.name} (next round {models.next_round})")

    def _participants(self, fl_ctx: FLContext) -> list[str] | None:
        connected = sorted(client.name for client in self._engine.get_clients())
        unknown = [name for name in connected if name not in self.labels]
        if unknown:
            self.system_panic(f"clients {unknown} are not in client_id_label_mapping {self.labels}; "
                              "add them to config_fed_server.json", fl_ctx)
            return None
        absent = sorted(set(self.labels) - set(connected))
        if absent:
            self.log_warning(fl_ctx, f"clients {absent} of client_id_label_mapping are not connected")
        return connected

    def _run_tasks(self, task_name: str, models: ModelSet, clients: list[str], abort_signal: Signal,
                   fl_ctx: FLContext) -> None:
        self._open_tasks(models.next_round)
        send_moments = self.mode.clients_step_adam and task_name == self.train_task_name
        tasks = []
        for client in clients:
            data = FedSMTask(round=models.next_round, num_rounds=self.num_rounds, label=self.labels[client],
                             num_clients=len(clients), global_model=models.global_model,
                             personalized=models.personalized[client], selector=models.selector,
                             selector_moments=models.selector_moments if send_moments else None).to_shareable()
            task = Task(name=task_name, data=data, timeout=self.train_timeout, result_received_cb=self._on_result)
            # `send` shares the model arrays with the task; `broadcast` would deep-copy them per task
            if self.parallel_tasks:
                self.send(task, fl_ctx, targets=[client], send_order=SendOrder.ANY)
                tasks.append(task)
            else:
                self.send_and_wait(task, fl_ctx, targets=[client], send_order=SendOrder.ANY, abort_signal=abort_signal)
        self._tasks_handed = time.monotonic()  # with parallel_tasks false, when the last task was done
        for task in tasks:  # a client's start error cancels every task (`_on_result`), which ends the waits
            self.communicator.wait_for_task(task, abort_signal)
        if abort_signal.triggered:
            self.cancel_all_tasks(fl_ctx=fl_ctx)
            return
        if self._start_errors:
            self.system_panic(f"stopping the run: {'; '.join(self._start_errors.values())}", fl_ctx)
            return
        for client in sorted(set(clients) - set(self._metrics)):
            self.log_warning(fl_ctx, f"no result from {client} for task '{task_name}' in round {models.next_round}")

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        """Decode and check a reply once, then stream it into the round; never raises on a bad reply."""
        client = client_task.client.name
        result, client_task.result = client_task.result, None
        client_task.task.data = Shareable()  # its arrays belong to this round's model set; let them go with it
        task_name = client_task.task.name
        rc = result.get_return_code()
        if rc != ReturnCode.OK:
            start_error = result.get_header(START_ERROR_HEADER)
            if start_error:
                self._start_errors[client] = str(start_error)
                self.cancel_all_tasks(fl_ctx=fl_ctx)
            self.log_warning(fl_ctx, f"{client} returned '{rc}' for task '{task_name}'"
                                     f"{': ' + str(start_error) if start_error else ''}")
            return
        training = task_name == self.train_task_name
        with self._lock:
            if training and not self._round_open:
                self.log_warning(fl_ctx, f"ignoring a result of {client} that came after the round closed")
                return
            started = time.monotonic()
            try:
                update = FedSMUpdate.from_shareable(result, self._update_shapes if training else {}, self._task_round)
            except MessageError as error:
                self.log_warning(fl_ctx, f"reply of {client} to '{task_name}' rejected: {error}")
                return
            finally:
                del result  # with disk offload, this releases the spooled files as the arrays are read
            decoded = time.monotonic() - started
            applied = {part: names for part, names in update.filters.items() if names}
            if applied:
                self.log_info(fl_ctx, f"reply of {client} to '{task_name}': filters applied {applied}")
            self._metrics[client] = update.metrics
            self._sizes[client] = update.num_validation
            if training:
                self._take_update(client, update, fl_ctx)
                self._decode_seconds += decoded
                self._accept_seconds += time.monotonic() - started

    def _track_best(self, models: ModelSet, round_number: int, weights: dict[str, float], fl_ctx: FLContext,
                    final: bool = False) -> None:
        """Validation metrics of this round belong to `models`, the models that were sent; `weights`
        are the counted sites' bounded steps (training) or validation sizes (final validation)."""
        sizes = bounded_claims({c: self._sizes[c] for c in self._metrics}, self.bounds.steps_ratio)
        self.log_info(fl_ctx, f"round {round_number} validation (mean over {len(self._metrics)} clients): "
                              f"global Dice {mean_metric(self._metrics, sizes, GLOBAL_METRIC):.4f}, "
                              f"selector accuracy {mean_metric(self._metrics, sizes, SELECTOR_METRIC):.4f}, "
                              f"selector confidence {mean_metric(self._metrics, sizes, SELECTOR_CONFIDENCE):.4f} "
                              f"(routing threshold {self.select_threshold:g})")
        sources = {GLOBAL: lambda _: models.global_model, SELECTOR: lambda _: models.selector,
                   PERSONALIZED: lambda client: models.personalized[client]}
        for model, client, value in improved_models(self._metrics, weights, models.best_metrics, self.best_rule,
                                                    round_number, final):
            path = self.persistor.best_path(model, client, fl_ctx)
            self._writes.submit(self.persistor.save_best, model, client, sources[model](client), value,
                                      round_number, fl_ctx)
            self.log_info(fl_ctx, f"new best {model}{' of ' + client if client else ''}: {value:.4f} -> {path.name}")

    def process_result_of_unknown_task(self, client: Client, task_name: str, client_task_id: str, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        self.log_warning(fl_ctx, f"ignoring a late result of '{task_name}' from {client.name}")

    def stop_controller(self, fl_ctx: FLContext):
        self.cancel_all_tasks(fl_ctx=fl_ctx)


def _snapshot(models: ModelSet) -> ModelSet:
    """What a background write may hold: the arrays are never modified once a model set exists (each
    round builds new ones), but the best-metric dict is updated by the next round's tracking."""
    return dataclasses.replace(models, best_metrics=dict(models.best_metrics),
                               norm_history={part: list(values) for part, values in models.norm_history.items()})
