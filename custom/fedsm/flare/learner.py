"""FedSM client: validates the received models, then trains global, personalized and selector models."""

import time
from pathlib import Path

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from torch.utils.tensorboard import SummaryWriter

from ..config import TrainConfig
from ..core.best_models import improves
from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR, SELECTOR_MOMENTS
from ..core.selector_update import expected_moment_shapes
from ..core.update_checks import shapes_of
from ..data.site_data import load_site_data
from ..io.checkpoint import save_checkpoint
from ..io.client_state import (apply_client_state, client_state_dir, copy_missing, restorable_state,
                               save_client_state)
from ..ops.heap import release_free_heap
from ..ops.telemetry import memory_use, reset_gpu_peak
from ..models.weights import get_weights, set_weights, weight_difference
from ..runtime import SIMULATOR_JOB_ID, compute_for, cpu_threads
from ..selector_training import selector_training
from ..tags import (GLOBAL_LOSS, GLOBAL_METRIC, PERSONALIZED_LOSS, PERSONALIZED_METRIC, SELECTOR_CONFIDENCE,
                    SELECTOR_LOSS, SELECTOR_METRIC)
from ..training import build_local_models, train_segmentation, validate_segmentation, validate_selector
from .dxo_codec import MessageError, open_collection
from .messages import SECONDS_KEY, START_ERROR_HEADER, FedSMTask, FedSMUpdate, public_reason

# Optimizers whose state lives on between rounds, saved in the client state. Not the selector's: in
# `client_adam` its state is replaced by the server's averaged moments before every step, and the
# gradient modes never step it on the client.
CARRIED_OPTIMIZERS = (GLOBAL, PERSONALIZED)
PERSONALIZED_BEST = "personalized_best.pt"
ANALYTICS_WRITER = "analytics_writer"


class SiteCurves:
    """Where a site's validation metrics and training losses go (tags of `fedsm.tags`, step = round).

    Always to NVFlare's experiment tracking: the client's `TBWriter` component `writer_id` fires them
    as analytics events, the client's `ConvertToFedEvent` widget sends them to the server, and the
    server's receiver (TensorBoard by default, or MLflow) records them per site. So the curves of every
    site end up in the server's job workspace, the one folder a downloaded job holds. With `local_dir`,
    the site also writes them to a TensorBoard folder of its own.
    """

    def __init__(self, fl_ctx: FLContext, writer_id: str, local_dir: Path | None = None):
        self.tracking = fl_ctx.get_engine().get_component(writer_id)
        if not isinstance(self.tracking, TBWriter):
            found = "none" if self.tracking is None else type(self.tracking).__name__
            raise ValueError(f"config_fed_client.json needs the component '{writer_id}' of class "
                             f"{TBWriter.__module__}.TBWriter to send the site's curves to the server "
                             f"(found: {found})")
        self.local = SummaryWriter(log_dir=str(local_dir)) if local_dir is not None else None
        self.writers = [self.tracking] if self.local is None else [self.tracking, self.local]

    def add(self, scalars: dict[str, float], step: int) -> None:
        for writer in self.writers:
            for tag, value in scalars.items():
                writer.add_scalar(tag, float(value), step)
            writer.flush()

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


class FedSMLearner(Executor):
    """Runs the `train` and `validate` tasks of the FedSM workflow on one site.

    Every hyper-parameter comes from `config_train.json` in the app's config folder. The curves go to
    the server through the `TBWriter` component `analytics_writer_id` (`SiteCurves`);
    `local_tensorboard` also writes them into this site's app folder, for a site that wants them on
    its own disk as well.
    """

    def __init__(self, train_config_filename: str = "config_train.json", train_task_name: str = "train",
                 validate_task_name: str = "validate", analytics_writer_id: str = ANALYTICS_WRITER,
                 local_tensorboard: bool = False):
        super().__init__()
        self.train_config_filename = train_config_filename
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.analytics_writer_id = analytics_writer_id
        self.local_tensorboard = local_tensorboard
        self.ready = False
        self.start_error = "the FedSM learner was not started"

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            try:
                self._initialize(fl_ctx)
            except Exception as error:
                # no system_panic: a client that stops leaves the server waiting for its results;
                # it answers every task with this reason instead, and the server ends the run
                self.log_error(fl_ctx, f"{fl_ctx.get_identity_name()} cannot start: {error}")
                self.start_error = f"{fl_ctx.get_identity_name()} cannot start: {public_reason(error)}"
        elif event_type == EventType.AFTER_SEND_TASK_RESULT:
            release_free_heap()  # the task and its reply are gone: off the round's path, while the server aggregates
        elif event_type == EventType.END_RUN and self.ready:
            self.curves.close()

    def _initialize(self, fl_ctx: FLContext) -> None:
        self.app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        self.client_name = fl_ctx.get_identity_name()
        self.in_simulator = fl_ctx.get_job_id() == SIMULATOR_JOB_ID
        self.config = TrainConfig.from_file(self.app_root / "config" / self.train_config_filename)
        self.mode = selector_training(self.config.selector_training)
        torch.manual_seed(self.config.seed)
        data = load_site_data(self.config, self.client_name)
        self.train_loader, self.selector_loader, self.val_loader = data.train_loader, data.selector_loader, \
            data.val_loader
        self.num_validation = data.num_validation
        self.compute = compute_for(self.config.amp, self.config.channels_last)
        self.models, self.optimizers = build_local_models(self.config.as_dict(), self.compute)
        unet_shapes, selector_shapes = shapes_of(get_weights(self.models[GLOBAL])), \
            shapes_of(get_weights(self.models[SELECTOR]))
        self.task_shapes = {GLOBAL: unet_shapes, PERSONALIZED: unet_shapes, SELECTOR: selector_shapes,
                            SELECTOR_MOMENTS: expected_moment_shapes(get_weights(self.models[SELECTOR]))}
        self.curves = SiteCurves(fl_ctx, self.analytics_writer_id,
                                 local_dir=self.app_root if self.local_tensorboard else None)
        self.best_metrics: dict[str, float] = {}
        self.state_dir = client_state_dir(self.config.client_state_dir, self.app_root, self.client_name)
        self.state_checked = False  # the first task decides whether the saved client state continues
        self.ready = True
        self.log_info(fl_ctx, f"{self.client_name}: {data.num_training} training and "
                              f"{self.num_validation} validation images, device {self.compute}")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        received = time.time()
        if task_name not in (self.train_task_name, self.validate_task_name):
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if not self.ready:
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(START_ERROR_HEADER, self.start_error)
            return reply
        decoding = time.monotonic()
        try:
            task = FedSMTask.from_shareable(shareable, self.task_shapes)
        except MessageError as error:
            self.log_error(fl_ctx, f"bad task data: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        decoded = time.monotonic() - decoding
        del shareable
        reset_gpu_peak(self.compute.device)
        if not self.state_checked:
            self._restore_client_state(task.round, fl_ctx)
        if self.compute.device.type == "cpu":
            torch.set_num_threads(cpu_threads(self.config.torch_threads, task.num_clients if self.in_simulator else 1))
        # seeded per round, so a resumed run draws the same shuffles and dropout masks as an uninterrupted one
        torch.manual_seed(self.config.seed + task.round)
        self.train_loader.generator.manual_seed(self.config.seed + task.round)
        set_weights(self.models[GLOBAL], task.global_model)
        set_weights(self.models[PERSONALIZED], task.personalized)
        set_weights(self.models[SELECTOR], task.selector)
        task.selector = None  # no mode needs the received selector once loaded; free it for the round
        started, busy_from = time.monotonic(), time.time()
        metrics = self._validate(task.round, task.num_rounds, task.label, fl_ctx)
        seconds = {"validate": time.monotonic() - started, "busy_from": busy_from, "busy_until": time.time(),
                   "decode": decoded, "received": received}
        reply = FedSMUpdate(round=task.round, label=task.label, metrics=metrics, num_validation=self.num_validation,
                            seconds=seconds)
        if task_name == self.validate_task_name:
            reply.memory = memory_use(self.compute.device)
            return _encoded(reply)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        started = time.monotonic()
        self._train(task, reply, fl_ctx)
        seconds["train"], seconds["busy_until"] = time.monotonic() - started, time.time()
        save_client_state(self.state_dir, task.round, self._carried_optimizers(), self.best_metrics)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        reply.memory = memory_use(self.compute.device)
        return _encoded(reply)

    def _carried_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {name: self.optimizers[name] for name in CARRIED_OPTIMIZERS}

    def _restore_client_state(self, round_number: int, fl_ctx: FLContext) -> None:
        """Continue the client state saved after round `round_number - 1`, if there is one."""
        self.state_checked = True
        restore = restorable_state(self.state_dir, round_number, self._carried_optimizers())
        if restore.state is not None:
            apply_client_state(restore.state, self._carried_optimizers())
            self.best_metrics = dict(restore.state.best_metrics)
            copy_missing(self.state_dir, self.app_root, [PERSONALIZED_BEST])
        (self.log_warning if restore.warning else self.log_info)(fl_ctx, restore.message)

    def _validate(self, round_number: int, num_rounds: int, label: int, fl_ctx: FLContext) -> dict[str, float]:
        accuracy, confidence = validate_selector(self.models[SELECTOR], self.val_loader, label, self.compute)
        metrics = {
            GLOBAL_METRIC: validate_segmentation(self.models[GLOBAL], self.val_loader, self.compute),
            PERSONALIZED_METRIC: validate_segmentation(self.models[PERSONALIZED], self.val_loader, self.compute),
            SELECTOR_METRIC: accuracy,
            SELECTOR_CONFIDENCE: confidence,
        }
        self.curves.add(metrics, round_number)
        personalized = {"weights": get_weights(self.models[PERSONALIZED]), "round": round_number,
                        PERSONALIZED_METRIC: metrics[PERSONALIZED_METRIC]}
        save_checkpoint(self.app_root / "personalized_last.pt", personalized)
        if improves(self.best_metrics, PERSONALIZED, metrics[PERSONALIZED_METRIC]):
            for folder in {self.app_root, self.state_dir}:  # a new job's app folder gets it from the state
                save_checkpoint(folder / PERSONALIZED_BEST, personalized)
        self.log_info(fl_ctx, f"round {round_number} validation (of {num_rounds} rounds): " +
                      ", ".join(f"{tag} {value:.4f}" for tag, value in metrics.items()))
        return metrics

    def _train(self, task: FedSMTask, reply: FedSMUpdate, fl_ctx: FLContext) -> None:
        """Train the three models and attach their update to `reply`. The received weights are dropped
        as soon as they are used, and the differences are written over the trained weights (the next task
        loads new ones), so their memory is free before the upload."""
        epochs = self.config.local_epochs
        loss_global, steps = train_segmentation(self.models[GLOBAL], self.optimizers[GLOBAL], self.train_loader,
                                                epochs, self.compute)
        loss_personalized, _ = train_segmentation(self.models[PERSONALIZED], self.optimizers[PERSONALIZED],
                                                  self.train_loader, epochs, self.compute)
        moments, task.selector_moments = task.selector_moments, None
        selector_upload, loss_selector = self.mode.client_step(
            self.models[SELECTOR], self.optimizers[SELECTOR], self.selector_loader, task.label,
            self.config.selector_local_epochs, self.compute, moments)
        del moments
        losses = {GLOBAL_LOSS: loss_global, PERSONALIZED_LOSS: loss_personalized, SELECTOR_LOSS: loss_selector}
        self.curves.add(losses, task.round)
        self.log_info(fl_ctx, f"round {task.round} training: " +
                      ", ".join(f"{tag} {value:.4f}" for tag, value in losses.items()))
        global_diff = weight_difference(get_weights(self.models[GLOBAL]), task.global_model)
        task.global_model = None
        reply.add_training(global_diff, get_weights(self.models[PERSONALIZED]), selector_upload, steps)


def _encoded(reply: FedSMUpdate) -> Shareable:
    """`reply` as the task's result, with the seconds spent building it (`encode`) and the clock at its
    end (`replied`) added to its timings; sending it is NVFlare's, after `execute` returns."""
    started = time.monotonic()
    shareable = reply.to_shareable()
    collection = open_collection(shareable)
    collection.meta[SECONDS_KEY].update(encode=time.monotonic() - started, replied=time.time())
    return collection.update_shareable(shareable)
