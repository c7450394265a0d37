"""NVFlare shell of the FedSM round aggregation (step-weighted averages, selector rule, SoftPull)."""

from collections.abc import Mapping

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from ..core.model_set import ModelSet
from ..core.round_aggregation import RoundAggregator
from ..selector_training import SelectorTraining
from .messages import FedSMUpdate


class FedSMAggregator(FLComponent):
    """Streams each client's decoded update into the round as it arrives; `aggregate()` gives the next models."""

    def __init__(self, soft_pull_lambda: float = 0.7):
        super().__init__()
        if not 0.0 <= soft_pull_lambda <= 1.0:
            raise ValueError(f"soft_pull_lambda must be in [0, 1], got {soft_pull_lambda}")
        self.soft_pull_lambda = soft_pull_lambda
        self._round: RoundAggregator | None = None

    def start_round(self, current: ModelSet, labels: Mapping[str, int], mode: SelectorTraining,
                    selector_lr: float) -> None:
        self._round = RoundAggregator(current, labels, self.soft_pull_lambda,
                                      mode.server_update(current.selector, current.selector_moments, selector_lr))

    def accept(self, client: str, update: FedSMUpdate, weight: float, fl_ctx: FLContext) -> bool:
        """Add one client's update; a rejected update is logged with its reason and left out."""
        reason = self._round.accept(client, update.label, update.global_diff, update.personalized, update.selector,
                                    weight)
        if reason:
            self.log_warning(fl_ctx, f"update of {client} rejected in round {self._round.current.next_round}: {reason}")
            return False
        return True

    @property
    def contributors(self) -> list[str]:
        return self._round.contributors

    def discard(self) -> None:
        """Drop the round's sums (the round is discarded)."""
        self._round = None

    def aggregate(self, fl_ctx: FLContext) -> ModelSet:
        models = self._round.result()
        self._round = None
        return models
