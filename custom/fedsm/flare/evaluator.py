"""FedSM site evaluation: scores the super model it receives on this site's own test split.

Runs the `evaluate` task of the FedSM workflow (after the last round) and of the evaluate-only job.
It needs only the site's `testing` split and `config_train.json` (architectures, image size, data
paths), so a hospital that took no part in training can be scored. It returns `SiteTotals` (counts and
sums; no image or per-image value leaves the site) and writes, in its own app folder, a picture of a
few of its test slices with the ground truth and both models' contours.
"""

from pathlib import Path

import torch
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from ..config import TrainConfig, resolve_path
from ..core.update_checks import shapes_of
from ..data.datalist import DataError, check_images_readable, datalist_file, load_datalist
from ..data.loading import make_loader
from ..evaluation import TEST_SPLIT, SiteTotals, SuperModel, evaluate_loader, summarize
from ..evaluation_figure import draw_first_slices
from ..models.networks import build_selector, build_unet
from ..models.weights import get_weights, set_weights
from ..runtime import choose_device
from .dxo_codec import MessageError
from .evaluation_messages import EvaluationTask, totals_to_shareable

FIGURE_NAME = "test_slices.png"


class FedSMEvaluator(Executor):
    def __init__(self, train_config_filename: str = "config_train.json", evaluate_task_name: str = "evaluate",
                 figure_slices: int = 4):
        super().__init__()
        self.train_config_filename = train_config_filename
        self.evaluate_task_name = evaluate_task_name
        self.figure_slices = figure_slices

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self.evaluate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        site = fl_ctx.get_identity_name()
        try:
            config = TrainConfig.from_file(app_root / "config" / self.train_config_filename)
            items = self._test_items(config, site)
        except (OSError, ValueError) as error:
            self.log_error(fl_ctx, f"{site} cannot evaluate: {error}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        selector, global_model = build_selector(config.selector, config.select_num_classes), build_unet()
        try:
            task = EvaluationTask.from_shareable(shareable, shapes_of(get_weights(global_model)),
                                                 shapes_of(get_weights(selector)))
        except MessageError as error:
            self.log_error(fl_ctx, f"bad evaluation task: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        del shareable
        device = choose_device()  # float32 whatever the run's `amp`, as the test-only script
        model = SuperModel(selector=_loaded(selector, task.selector, device),
                           global_model=_loaded(global_model, task.global_model, device),
                           personalized={label: _loaded(build_unet(), weights, device)
                                         for label, weights in task.personalized.items()})
        label, threshold = task.label, task.threshold
        del task
        loader = make_loader(items, config.image_size, config.batch_size, shuffle=False,
                             num_workers=config.num_workers, seed=config.seed)
        results = evaluate_loader(loader, label, model, threshold, device, f"{site} test")
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        summary = summarize(site, results)
        self.log_info(fl_ctx, f"{site} test: {summary.images} images, super Dice {summary.super_dice:.4f}, "
                              f"global Dice {summary.global_dice:.4f}, routed {summary.personalized_share:.1%}")
        if self.figure_slices > 0:
            figure = draw_first_slices(loader, model, threshold, device, self.figure_slices,
                                       f"{site}: test slices", app_root / FIGURE_NAME)
            self.log_info(fl_ctx, f"wrote {figure}")
        return totals_to_shareable(SiteTotals.of(results))

    @staticmethod
    def _test_items(config: TrainConfig, site: str) -> list[dict[str, str]]:
        base_dir = resolve_path(config.dataset_base_dir, "dataset_base_dir")
        path = datalist_file(resolve_path(config.datalist_json_path, "datalist_json_path"), site)
        items = load_datalist(path, base_dir, (TEST_SPLIT,))[TEST_SPLIT]
        if not items:
            raise DataError(f"{path}: the '{TEST_SPLIT}' split is empty")
        check_images_readable(items, f"{path} '{TEST_SPLIT}'")
        return items


def _loaded(model: torch.nn.Module, weights, device: torch.device) -> torch.nn.Module:
    set_weights(model, weights)
    return model.to(device).eval()
