"""FedAvg client: validates and trains the global UNet only, exactly as FedSM trains its global model.

The server side of the FedAvg job is stock NVFlare (ScatterAndGather, InTimeAccumulateWeightedAggregator,
FullModelShareableGenerator, PTFileModelPersistor, IntimeModelSelector, GlobalModelEval). This
executor answers its two tasks:

- `train`: load the received global weights, validate them on the local validation split (Dice,
  reported as `MetaKey.INITIAL_METRICS` for NVFlare's best-model selection and sent, like FedSM's
  curves, to the server's experiment tracking as `val_metric_global_model`, step = round), train
  `local_epochs` epochs with `fedsm.training` (Dice loss, the client's own Adam kept across rounds,
  batch size and seeding as in FedSM), and return the weight difference weighted by the number of
  local steps.
- `validate` (GlobalModelEval after the last round): the Dice of a server model on the local
  validation split, with the number of validation images (`{"val_dice", "num_val"}`).

Hyper-parameters come from the same `config_train.json` as the FedSM job (its selector keys are
unused here).
"""

import time
from pathlib import Path

import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from fedsm.config import TrainConfig
from fedsm.data.site_data import load_site_data
from fedsm.flare.learner import ANALYTICS_WRITER, SiteCurves
from fedsm.runtime import SIMULATOR_JOB_ID, compute_for, cpu_threads
from fedsm.tags import GLOBAL_LOSS, GLOBAL_METRIC
from fedsm.models.networks import build_unet
from fedsm.models.weights import get_weights, set_weights, weight_difference
from fedsm.training import train_segmentation, validate_segmentation

VAL_METRIC = "val_dice"
NUM_VAL = "num_val"


def seeded_unet(seed: int = 0) -> torch.nn.Module:
    """The FedSM UNet initialized from `seed`: the same initial weights as FedSM's global model and the
    centralized / local baselines (the persistor builds the server's initial model with it)."""
    torch.manual_seed(int(seed))
    return build_unet()


class UNetFedAvgExecutor(Executor):
    """Client executor of the FedAvg baseline (tasks `train` and `validate`)."""

    def __init__(self, train_config_filename: str = "config_train.json", train_task_name: str = "train",
                 validate_task_name: str = "validate", clients_per_host: int = 1,
                 analytics_writer_id: str = ANALYTICS_WRITER, local_tensorboard: bool = False):
        """`clients_per_host`: clients sharing this machine's cores when `torch_threads` is 0 in the
        simulator (the job sets the number of its sites); outside the simulator each site has its own.
        `analytics_writer_id`, `local_tensorboard`: where the curves go, as in `FedSMLearner`."""
        super().__init__()
        self.train_config_filename = train_config_filename
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.clients_per_host = clients_per_host
        self.analytics_writer_id = analytics_writer_id
        self.local_tensorboard = local_tensorboard
        self.ready = False

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            try:
                self._initialize(fl_ctx)
            except Exception as error:
                self.log_error(fl_ctx, f"FedAvg client cannot start: {error}")
                self.system_panic(f"FedAvg client cannot start: {error}", fl_ctx)
        elif event_type == EventType.END_RUN and self.ready:
            self.curves.close()

    def _initialize(self, fl_ctx: FLContext) -> None:
        self.app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        self.client_name = fl_ctx.get_identity_name()
        self.config = TrainConfig.from_file(self.app_root / "config" / self.train_config_filename)
        data = load_site_data(self.config, self.client_name)
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.num_validation = data.num_validation
        self.compute = compute_for(self.config.amp, self.config.channels_last)
        if self.compute.device.type == "cpu":
            in_simulator = fl_ctx.get_job_id() == SIMULATOR_JOB_ID
            torch.set_num_threads(cpu_threads(self.config.torch_threads, self.clients_per_host if in_simulator else 1))
        self.model = self.compute.place(build_unet())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        self.curves = SiteCurves(fl_ctx, self.analytics_writer_id,
                                 local_dir=self.app_root if self.local_tensorboard else None)
        self.ready = True
        self.log_info(fl_ctx, f"{self.client_name}: {data.num_training} training and "
                              f"{self.num_validation} validation images, device {self.compute}")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.train_task_name, self.validate_task_name):
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if not self.ready:
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        try:
            dxo = from_shareable(shareable)
        except ValueError as error:
            self.log_error(fl_ctx, f"bad task data: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, dict):
            self.log_error(fl_ctx, f"expected model weights, got data kind {dxo.data_kind}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        try:
            set_weights(self.model, dxo.data)
        except (RuntimeError, KeyError, ValueError) as error:
            self.log_error(fl_ctx, f"received weights do not fit the UNet: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if task_name == self.validate_task_name:
            return self._validate_server_model(shareable, fl_ctx)
        return self._train(dxo.data, shareable, fl_ctx, abort_signal)

    def _validate_server_model(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        dice = validate_segmentation(self.model, self.val_loader, self.compute)
        self.log_info(fl_ctx, f"validation of server model {owner}: {VAL_METRIC} {dice:.4f}")
        return DXO(data_kind=DataKind.METRICS, data={VAL_METRIC: dice, NUM_VAL: self.num_validation}).to_shareable()

    def _train(self, received: dict, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        round_number = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0))
        started = time.monotonic()
        dice = validate_segmentation(self.model, self.val_loader, self.compute)
        self.curves.add({GLOBAL_METRIC: dice}, round_number)
        # seeded per round like the FedSM clients: the same shuffles and dropout masks
        torch.manual_seed(self.config.seed + round_number)
        self.train_loader.generator.manual_seed(self.config.seed + round_number)
        loss, steps = train_segmentation(self.model, self.optimizer, self.train_loader, self.config.local_epochs,
                                         self.compute)
        self.curves.add({GLOBAL_LOSS: loss}, round_number)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.log_info(fl_ctx, f"round {round_number}: {VAL_METRIC} of the received model {dice:.4f}, "
                              f"train_loss {loss:.4f}, {steps} steps, {time.monotonic() - started:.1f} s")
        diff = weight_difference(get_weights(self.model), received)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: steps, MetaKey.INITIAL_METRICS: {VAL_METRIC: dice}}
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
