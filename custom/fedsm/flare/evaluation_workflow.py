"""`FedSMEvaluationController`: the evaluate-only FedSM job, the federated test evaluation of a finished
run's best checkpoints (`federated_evaluation`), with no training.

Every connected site scores the super model on its own test split: the sites of the run by their
selector labels, any other site (a hospital that joined later) as an unseen site. The server reads
the best checkpoints from `models_dir`, the server app folder of the finished run (a simulator
workspace's `server/simulate_job/app_server`, or the `app_server` folder of a downloaded job).
"""

from nvflare.apis.client import Client
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from ..config import resolve_path
from ..core.label_mapping import check_label_mapping
from ..evaluation import DEFAULT_THRESHOLD
from ..io.checkpoint import CheckpointError
from .federated_evaluation import BestWeights, FederatedEvaluation


class FedSMEvaluationController(Controller):
    def __init__(self, models_dir: str, client_id_label_mapping: dict | None = None,
                 select_threshold: float = DEFAULT_THRESHOLD, evaluate_task_name: str = "evaluate",
                 task_timeout: int = 1800):
        """
        Args:
            models_dir: server app folder of the finished run (holds its `best_*.pt`).
            client_id_label_mapping: the run's client name -> selector label (its job's mapping).
            select_threshold: the super model's routing threshold.
            task_timeout: seconds a site may take to evaluate (0: no limit).
        """
        super().__init__()
        self.models_dir = models_dir
        self.client_id_label_mapping = dict(client_id_label_mapping or {})
        self.select_threshold = select_threshold
        self.evaluate_task_name = evaluate_task_name
        self.task_timeout = task_timeout
        self._evaluation = FederatedEvaluation(self, evaluate_task_name, select_threshold, task_timeout)

    def start_controller(self, fl_ctx: FLContext):
        pass

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext):
        try:
            mapping = self.client_id_label_mapping
            labels = check_label_mapping(mapping, max([len(mapping), *(v + 1 for v in mapping.values()
                                                                       if isinstance(v, int))]))
            folder = resolve_path(self.models_dir, "models_dir")
            best, without = BestWeights.load(folder, labels)
        except (ValueError, CheckpointError) as error:
            self.system_panic(f"FedSM evaluation cannot start: {error}", fl_ctx)
            return
        if without:
            self.log_warning(fl_ctx, f"{without} have no best personalized model in {folder}; images routed to "
                                     "them are segmented by the global model")
        clients = sorted(client.name for client in self._engine.get_clients())
        self.log_info(fl_ctx, f"evaluating the best models of {folder} at {clients}")
        self._evaluation.run(best, labels, clients, fl_ctx, abort_signal)

    def process_result_of_unknown_task(self, client: Client, task_name: str, client_task_id: str, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        self.log_warning(fl_ctx, f"ignoring a late result of '{task_name}' from {client.name}")

    def stop_controller(self, fl_ctx: FLContext):
        self.cancel_all_tasks(fl_ctx=fl_ctx)
