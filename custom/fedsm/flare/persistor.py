"""Server persistence: the whole FedSM model set (resume state) and the best checkpoints."""

from pathlib import Path

import numpy as np
import torch
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from ..config import TrainConfig, resolve_path
from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from ..core.model_set import ModelSet, Weights
from ..io.checkpoint import (STATE_FILENAME, CheckpointError, best_checkpoint_name, load_checkpoint,
                             model_set_from_checkpoint, model_set_to_checkpoint, rotated_states, save_checkpoint,
                             save_rotated_state)
from ..io.client_state import copy_missing
from ..models.networks import build_models
from ..models.weights import get_weights


def initial_model_set(train_config: TrainConfig, clients: list[str]) -> ModelSet:
    """Round-0 models, seeded: one UNet initialization shared by the global and every personalized model."""
    torch.manual_seed(train_config.seed)
    models = build_models(train_config.as_dict())
    global_weights = get_weights(models[GLOBAL])
    return ModelSet(
        global_model=global_weights,
        selector=get_weights(models[SELECTOR]),
        selector_moments={},
        personalized={client: {k: v.copy() for k, v in global_weights.items()} for client in clients},
    )


class FedSMModelPersistor(FLComponent):
    """Loads the model set to start from, saves it after every round, and writes best checkpoints,
    all in the server app folder.

    Start: the state saved in this app folder (the same job restarted), else `resume_from` (the
    `fedsm_state.pt` of an earlier run, to continue it as a new job), else fresh models. The last
    `keep_states` states are kept (`fedsm_state.r<next round>.pt`, `fedsm_state.pt` being the newest);
    a state that does not load falls back to the newest older one that does.
    """

    def __init__(self, train_config_filename: str = "config_train.json", state_filename: str = STATE_FILENAME,
                 resume_from: str = "", keep_states: int = 3):
        super().__init__()
        if keep_states < 1:
            raise ValueError(f"keep_states must be >= 1, got {keep_states}")
        self.train_config_filename = train_config_filename
        self.state_filename = state_filename
        self.resume_from = resume_from
        self.keep_states = keep_states

    def _app_root(self, fl_ctx: FLContext) -> Path:
        return Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))

    def train_config(self, fl_ctx: FLContext) -> TrainConfig:
        return TrainConfig.from_file(self._app_root(fl_ctx) / "config" / self.train_config_filename)

    def load(self, clients: list[str], fl_ctx: FLContext) -> ModelSet:
        state_path = self._app_root(fl_ctx) / self.state_filename
        if not state_path.exists() and not rotated_states(state_path.parent, self.state_filename) and self.resume_from:
            state_path = resolve_path(self.resume_from, "resume_from")
            if not state_path.is_file():
                raise FileNotFoundError(f"resume_from: no FedSM state at {state_path}")
        candidates = [path for path in [state_path, *rotated_states(state_path.parent, state_path.name)]
                      if path.exists()]
        if not candidates:
            self.log_info(fl_ctx, "no saved FedSM state: starting from freshly initialized models")
            return initial_model_set(self.train_config(fl_ctx), clients)
        models, state_path = self._newest_loadable(candidates, fl_ctx)
        for client in clients:
            if client not in models.personalized:
                self.log_warning(fl_ctx, f"{state_path} has no personalized model of '{client}': starting it "
                                         "from the current global model")
                models.personalized[client] = {k: np.array(v) for k, v in models.global_model.items()}
        self.log_info(fl_ctx, f"resuming from {state_path} at round {models.next_round}")
        self.carry_best_files(state_path.parent, models, fl_ctx)
        return models

    def carry_best_files(self, source: Path, models: ModelSet, fl_ctx: FLContext) -> None:
        """Copy the best checkpoints of the run resumed from (folder `source`) into this app folder where
        it has none, so that they match the best metrics carried over in the state."""
        names = [best_checkpoint_name(GLOBAL), best_checkpoint_name(SELECTOR)] + \
            [best_checkpoint_name(PERSONALIZED, client) for client in sorted(models.personalized)]
        copied = copy_missing(source, self._app_root(fl_ctx), names)
        if copied:
            self.log_info(fl_ctx, f"carried the best checkpoints {copied} over from {source}")

    def _newest_loadable(self, candidates: list[Path], fl_ctx: FLContext) -> tuple[ModelSet, Path]:
        errors = []
        for path in candidates:
            try:
                return model_set_from_checkpoint(load_checkpoint(path), path), path
            except CheckpointError as error:
                self.log_warning(fl_ctx, f"{error}; trying an older state")
                errors.append(str(error))
        raise CheckpointError(f"{errors[0]} (and no older state loads: tried {[str(p) for p in candidates]})")

    def save(self, models: ModelSet, fl_ctx: FLContext) -> Path:
        return save_rotated_state(self._app_root(fl_ctx), self.state_filename, model_set_to_checkpoint(models),
                                  models.next_round, self.keep_states)

    def best_path(self, model: str, client: str | None, fl_ctx: FLContext) -> Path:
        return self._app_root(fl_ctx) / best_checkpoint_name(model, client)

    def save_best(self, model: str, client: str | None, weights: Weights, metric: float, round_number: int,
                  fl_ctx: FLContext) -> Path:
        path = self.best_path(model, client, fl_ctx)
        save_checkpoint(path, {"weights": weights, "metric": float(metric), "round": int(round_number)})
        return path
