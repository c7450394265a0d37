"""A client-side NVFlare result filter that corrupts one client's update, to test the server's checks.

It works on the FedSM message as the server will read it (`fedsm.flare.messages`): a COLLECTION of
part DXOs whose arrays are torch tensors."""

import time
from pathlib import Path

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedsm.flare.messages import GLOBAL, LABEL_KEY, PERSONALIZED


class CorruptUpdate(Filter):
    """On `client`, from round `from_round` on (through round `to_round`, if given), apply `fault` to
    the train result: `nan` (NaN in the global diff), `scale` (every array of the update times 1e6, the
    size of the update of a site that did not normalize its images), `shape` (a wrong selector shape),
    `dtype` (a float16 personalized array), `label` (claims another client's selector label), `stall`
    (in round `from_round` only, the client stays connected but answers only after `seconds`, or as
    soon as the file `release_file` holds `release_text`: e.g. once the server's log says it has given
    up on this client, whose answer then comes late without holding up the end of the run)."""

    def __init__(self, client: str, fault: str = "nan", from_round: int = 0, to_round: int | None = None,
                 seconds: float = 0.0, release_file: str = "", release_text: str = ""):
        super().__init__()
        self.client, self.fault, self.from_round, self.to_round = client, fault, from_round, to_round
        self.seconds = seconds
        self.release_file, self.release_text = release_file, release_text

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if fl_ctx.get_identity_name() != self.client:
            return shareable
        collection = from_shareable(shareable)
        if GLOBAL not in collection.data:
            return shareable
        round_number = collection.meta[AppConstants.CURRENT_ROUND]
        if round_number < self.from_round or (self.to_round is not None and round_number > self.to_round):
            return shareable
        if self.fault == "stall":
            if round_number == self.from_round:
                self._stall()
            return shareable
        if self.fault == "scale":
            for part in collection.data.values():
                if isinstance(part.data, dict) and part.data_kind != "METRICS":
                    part.data = {name: array * 1e6 for name, array in part.data.items()}
        elif self.fault == "nan":
            arrays = collection.data[GLOBAL].data
            name = next(iter(arrays))
            arrays[name] = torch.full_like(arrays[name], float("nan"))
        elif self.fault == "shape":
            arrays = collection.data[PERSONALIZED].data
            arrays[next(iter(arrays))] = torch.zeros((1, 2, 3), dtype=torch.float32)
        elif self.fault == "dtype":
            arrays = collection.data[PERSONALIZED].data
            name = next(iter(arrays))
            arrays[name] = arrays[name].to(torch.float16)
        elif self.fault == "label":
            collection.meta[LABEL_KEY] = (collection.meta[LABEL_KEY] + 1) % 3
        return collection.update_shareable(shareable)

    def _stall(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self._released():
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))

    def _released(self) -> bool:
        if not (self.release_file and self.release_text):
            return False
        try:
            return self.release_text in Path(self.release_file).read_text(errors="replace")
        except OSError:  # not written yet
            return False
