"""The test evaluation of a FedSM run at the sites: each site scores the best models on its own test
split (`evaluator.FedSMEvaluator`) and returns its totals; the server writes the table.

Used after the last round by the FedSM workflow and alone by the evaluate-only workflow
(`FedSMEvaluationController`), for a finished run's best checkpoints, so that a hospital that joins
later can be scored. The server writes `test_results.json` (the same keys and definitions as
`result_stat.prostate_2d_test_only --output_json`) into its app folder and logs the table. The pooled
row covers the sites the selector was trained on; a site without a selector label gets a row of its
own (the unseen-site row).
"""

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from nvflare.apis.controller_spec import ClientTask, SendOrder, Task
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from ..core.model_set import Weights
from ..evaluation import DEFAULT_THRESHOLD, UNKNOWN_SITE, SiteTotals, format_table, pooled_totals, routing_note
from ..io.atomic import write_text_atomic
from ..io.checkpoint import CheckpointError, best_checkpoint_name, load_checkpoint
from .dxo_codec import MessageError
from .evaluation_messages import EvaluationTask, totals_from_shareable

RESULTS_FILE = "test_results.json"


@dataclasses.dataclass
class BestWeights:
    """The best checkpoints of a run: the super model's weights, personalized ones by selector label."""

    global_model: Weights
    selector: Weights
    personalized: dict[int, Weights]

    @classmethod
    def load(cls, folder: Path, labels: Mapping[str, int]) -> tuple["BestWeights", list[str]]:
        """The best checkpoints in `folder`, and the sites without a best personalized model (their
        images go to the global model). Raises `CheckpointError` naming a missing global or selector file."""
        def weights(name: str) -> Weights:
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"no best checkpoint {path}")
            return load_checkpoint(path)["weights"]

        personalized, without = {}, []
        for client, label in labels.items():
            try:
                personalized[label] = weights(best_checkpoint_name(PERSONALIZED, client))
            except CheckpointError:
                without.append(client)
        return cls(weights(best_checkpoint_name(GLOBAL)), weights(best_checkpoint_name(SELECTOR)),
                   personalized), without


class FederatedEvaluation:
    """One evaluation round driven by `controller` (see the module)."""

    def __init__(self, controller: Controller, task_name: str = "evaluate", threshold: float = DEFAULT_THRESHOLD,
                 timeout: int = 0):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"select_threshold must be in [0, 1], got {threshold}")
        self.controller, self.task_name, self.threshold, self.timeout = controller, task_name, threshold, timeout
        self._totals: dict[str, SiteTotals] = {}

    def run(self, best: BestWeights, labels: Mapping[str, int], clients: list[str], fl_ctx: FLContext,
            abort_signal: Signal) -> dict | None:
        """Evaluate at every site of `clients`; the results written, or None when no site answered."""
        self._totals = {}
        tasks = []
        for client in clients:
            data = EvaluationTask(label=labels.get(client, UNKNOWN_SITE), threshold=self.threshold,
                                  global_model=best.global_model, selector=best.selector,
                                  personalized=best.personalized).to_shareable()
            task = Task(name=self.task_name, data=data, timeout=self.timeout, result_received_cb=self._on_result)
            self.controller.send(task, fl_ctx, targets=[client], send_order=SendOrder.ANY)
            tasks.append(task)
        for task in tasks:
            self.controller.communicator.wait_for_task(task, abort_signal)
        if abort_signal.triggered or not self._totals:
            self.controller.log_warning(fl_ctx, "federated test evaluation: no site returned results")
            return None
        return self._write(labels, fl_ctx)

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        client, result = client_task.client.name, client_task.result
        client_task.result, client_task.task.data = None, Shareable()
        if result.get_return_code() != ReturnCode.OK:
            self.controller.log_warning(fl_ctx, f"{client} returned '{result.get_return_code()}' for the test "
                                                "evaluation")
            return
        try:
            self._totals[client] = totals_from_shareable(result)
        except MessageError as error:
            self.controller.log_warning(fl_ctx, f"test results of {client} rejected: {error}")

    def _write(self, labels: Mapping[str, int], fl_ctx: FLContext) -> dict:
        trained = sorted((c for c in self._totals if c in labels), key=labels.get)
        unseen = sorted(c for c in self._totals if c not in labels)
        rows = [self._totals[client].summary(client) for client in trained + unseen]
        pooled = pooled_totals(self._totals[client] for client in trained).summary("pooled")
        note = routing_note(pooled, self.threshold)
        results = {"select_threshold": self.threshold, "sites": {row.site: row.as_json() for row in rows},
                   "pooled": pooled.as_json(), "test_dice": pooled.as_json()["super_dice"],
                   "unseen_sites": unseen, "routing": note,
                   "totals": {client: totals.as_dict() for client, totals in self._totals.items()}}
        path = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / RESULTS_FILE
        write_text_atomic(path, json.dumps(results, indent=2) + "\n")
        self.controller.log_info(fl_ctx, f"federated test evaluation (select_threshold {self.threshold:g}; pooled: "
                                         f"the sites the selector was trained on), written to {path}:\n"
                                         f"{format_table(rows, pooled)}\n{note}")
        return results
