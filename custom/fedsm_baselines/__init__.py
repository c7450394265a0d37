"""Baselines of the FedSM generalization-gap study that run inside NVFlare.

`fedavg_executor` is the client side of the FedAvg job (`jobs/fedavg_prostate`): it trains only the
global UNet, with the same model, data, preprocessing and local training as FedSM's global model
(`fedsm.training`). Everything else of that job is stock NVFlare.
"""
