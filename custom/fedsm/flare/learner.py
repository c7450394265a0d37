"""FedSM client: validates the received models, then trains global, personalized and selector models."""

import os
import time
from pathlib import Path

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from torch.utils.tensorboard import SummaryWriter

from ..config import TrainConfig
from ..core.adam_moments import extract_adam_moments, load_adam_moments
from ..core.best_models import improves
from ..core.selector_update import GRADIENT_UPLOAD
from ..data.site_data import load_site_data
from ..io.checkpoint import save_checkpoint
from ..models.networks import build_models
from ..models.weights import get_weights, set_weights, weight_difference
from ..training import (selector_full_batch_gradient, train_segmentation, train_selector_full_batch,
                        validate_segmentation, validate_selector)
from .wire import TASK_PARTS, Meta, pack, unpack

SIMULATOR_JOB_ID = "simulate_job"


def choose_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_threads(configured: int, clients_on_this_host: int) -> int:
    """Torch threads per client: the configured number, or (0 = auto) the cores shared among the
    clients that run on this host, so that simulator clients do not oversubscribe the CPU."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, clients_on_this_host))


class FedSMLearner(Executor):
    """Runs the `train` and `validate` tasks of the FedSM workflow on one site.

    Every hyper-parameter comes from `config_train.json` in the app's config folder.
    """

    def __init__(self, train_config_filename: str = "config_train.json", train_task_name: str = "train",
                 validate_task_name: str = "validate"):
        super().__init__()
        self.train_config_filename = train_config_filename
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.ready = False
        self.start_error = "the FedSM learner was not started"

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            try:
                self._initialize(fl_ctx)
            except Exception as error:
                # no system_panic: a client that stops leaves the server waiting for its results;
                # it answers every task with this reason instead, and the server ends the run
                self.start_error = f"{fl_ctx.get_identity_name()} cannot start: {error}"
                self.log_error(fl_ctx, self.start_error)
        elif event_type == EventType.END_RUN and self.ready:
            self.writer.close()

    def _initialize(self, fl_ctx: FLContext) -> None:
        self.app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        self.client_name = fl_ctx.get_identity_name()
        self.in_simulator = fl_ctx.get_job_id() == SIMULATOR_JOB_ID
        self.config = TrainConfig.from_file(self.app_root / "config" / self.train_config_filename)
        torch.manual_seed(self.config.seed)
        data = load_site_data(self.config, self.client_name)
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.num_validation = data.num_validation
        self.device = choose_device()
        self.models = {kind: model.to(self.device) for kind, model in build_models(self.config.as_dict()).items()}
        self.optimizers = {
            "global": torch.optim.Adam(self.models["global"].parameters(), lr=self.config.learning_rate),
            "personalized": torch.optim.Adam(self.models["personalized"].parameters(), lr=self.config.learning_rate),
            "selector": torch.optim.Adam(self.models["selector"].parameters(), lr=self.config.learning_rate_select),
        }
        self.writer = SummaryWriter(log_dir=str(self.app_root))
        self.best_metrics: dict[str, float] = {}
        self.ready = True
        self.log_info(fl_ctx, f"{self.client_name}: {data.num_training} training and "
                              f"{self.num_validation} validation images, device {self.device}")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.train_task_name, self.validate_task_name):
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if not self.ready:
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(Meta.START_ERROR, self.start_error)
            return reply
        try:
            received, meta = unpack(shareable, TASK_PARTS)
        except ValueError as error:
            self.log_error(fl_ctx, f"bad task data: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(self.config.torch_threads,
                                              meta.get(Meta.NUM_CLIENTS, 1) if self.in_simulator else 1))
        round_number, label = int(meta[Meta.ROUND]), int(meta[Meta.LABEL])
        # seeded per round, so a resumed run draws the same shuffles and dropout masks as an uninterrupted one
        torch.manual_seed(self.config.seed + round_number)
        self.train_loader.generator.manual_seed(self.config.seed + round_number)
        for kind in ("global", "personalized", "selector"):
            set_weights(self.models[kind], received[kind])
        started, busy_from = time.monotonic(), time.time()
        metrics = self._validate(round_number, label, fl_ctx)
        seconds = {"validate": time.monotonic() - started, "busy_from": busy_from, "busy_until": time.time()}
        reply_meta = {Meta.ROUND: round_number, Meta.LABEL: label, Meta.METRICS: metrics,
                      Meta.NUM_VAL: self.num_validation, Meta.SECONDS: seconds}
        if task_name == self.validate_task_name:
            return pack({}, reply_meta)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        started = time.monotonic()
        update, steps = self._train(round_number, label, received, fl_ctx)
        # differences written over the trained global and selector weights (the next task loads new
        # ones); the received weights are popped so that their memory is free before the upload
        update["global"] = weight_difference(update["global"], received.pop("global"))
        received_selector = received.pop("selector")
        if "selector" in update:
            update["selector"] = weight_difference(update["selector"], received_selector)
        seconds["train"], seconds["busy_until"] = time.monotonic() - started, time.time()
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        return pack(update, {**reply_meta, Meta.WEIGHT: steps})

    def _validate(self, round_number: int, label: int, fl_ctx: FLContext) -> dict[str, float]:
        accuracy, confidence = validate_selector(self.models["selector"], self.val_loader, label, self.device)
        metrics = {
            "val_metric_global_model": validate_segmentation(self.models["global"], self.val_loader, self.device),
            "val_metric_person_model": validate_segmentation(self.models["personalized"], self.val_loader, self.device),
            "val_metric_select_model": accuracy,
            "val_confidence_select_model": confidence,
        }
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, round_number)
        self.writer.flush()
        personalized = {"weights": get_weights(self.models["personalized"]), "round": round_number,
                        "val_metric_person_model": metrics["val_metric_person_model"]}
        save_checkpoint(self.app_root / "personalized_last.pt", personalized)
        if improves(self.best_metrics, "personalized", metrics["val_metric_person_model"]):
            save_checkpoint(self.app_root / "personalized_best.pt", personalized)
        self.log_info(fl_ctx, f"round {round_number} validation: " +
                      ", ".join(f"{tag} {value:.4f}" for tag, value in metrics.items()))
        return metrics

    def _train(self, round_number: int, label: int, received: dict, fl_ctx: FLContext):
        epochs = self.config.local_epochs
        loss_global, steps = train_segmentation(self.models["global"], self.optimizers["global"], self.train_loader,
                                                epochs, self.device)
        loss_personalized, _ = train_segmentation(self.models["personalized"], self.optimizers["personalized"],
                                                  self.train_loader, epochs, self.device)
        selector = self.models["selector"]
        if self.config.selector_training in GRADIENT_UPLOAD:
            loss_selector = selector_full_batch_gradient(selector, self.train_loader, label, self.device)
            selector_update = {"selector_gradient": {name: param.grad.detach().cpu().numpy()
                                                     for name, param in selector.named_parameters()}}
        else:
            # popped from the received message, so its memory is released once loaded
            load_adam_moments(self.optimizers["selector"], selector.named_parameters(),
                              received.pop("selector_moments"), share_memory=True)
            loss_selector = train_selector_full_batch(selector, self.optimizers["selector"], self.train_loader, label,
                                                      self.config.selector_local_epochs, self.device)
            selector_update = {
                "selector": get_weights(selector),
                "selector_moments": extract_adam_moments(self.optimizers["selector"], selector.named_parameters()),
            }
        losses = {"train_loss": loss_global, "train_loss_personalized": loss_personalized,
                  "train_loss_selector": loss_selector}
        for tag, value in losses.items():
            self.writer.add_scalar(tag, value, round_number)
        self.writer.flush()
        self.log_info(fl_ctx, f"round {round_number} training: " +
                      ", ".join(f"{tag} {value:.4f}" for tag, value in losses.items()))
        update = {
            "global": get_weights(self.models["global"]),
            "personalized": get_weights(self.models["personalized"]),
            **selector_update,
        }
        return update, steps
