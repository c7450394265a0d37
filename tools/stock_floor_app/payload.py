"""A model of a given number of float32 parameters in 64 MiB pieces, and nothing else: what NVFlare's
stock FedAvg moves in `tools/stock_floor.py`, sized like a FedSM message (whose large arrays travel
in 64 MiB row pieces too)."""

import torch

PIECE_ELEMENTS = 16 * 2**20  # 64 MiB of float32


class Payload(torch.nn.Module):
    def __init__(self, parameters: int):
        super().__init__()
        sizes = [PIECE_ELEMENTS] * (parameters // PIECE_ELEMENTS)
        if parameters % PIECE_ELEMENTS:
            sizes.append(parameters % PIECE_ELEMENTS)
        self.pieces = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(size)) for size in sizes)
