"""A client-side NVFlare result filter that corrupts one client's update, to test the server's checks.

The corrupt arrays are torch tensors, as every array of a FedSM message is (`fedsm.flare.wire`)."""

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable


class CorruptUpdate(Filter):
    """On `client`, from round `from_round` on, apply `fault` to the train result:
    `nan` (NaN in the global diff), `shape` (a wrong selector shape), `missing` (drops a personalized
    key), `label` (claims another client's selector label)."""

    def __init__(self, client: str, fault: str = "nan", from_round: int = 0):
        super().__init__()
        self.client, self.fault, self.from_round = client, fault, from_round

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if fl_ctx.get_identity_name() != self.client:
            return shareable
        dxo = from_shareable(shareable)
        if "global" not in dxo.data or dxo.meta.get("fedsm_round", 0) < self.from_round:
            return shareable
        if self.fault == "nan":
            name = next(iter(dxo.data["global"]))
            dxo.data["global"][name] = torch.full_like(dxo.data["global"][name], float("nan"))
        elif self.fault == "shape":
            name = next(iter(dxo.data["selector"]))
            dxo.data["selector"][name] = torch.zeros((1, 2, 3), dtype=torch.float32)
        elif self.fault == "missing":
            dxo.data["personalized"].pop(next(iter(dxo.data["personalized"])))
        elif self.fault == "label":
            dxo.meta["fedsm_selector_label"] = (dxo.meta["fedsm_selector_label"] + 1) % 3
        return dxo.to_shareable()
