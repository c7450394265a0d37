"""The names of FedSM's model kinds, defined once for every module that keys something by them.

A name is at once a key of the client's models and optimizers, a message part, a key of the server's
checkpoint and a part of a best checkpoint's file name (`best_global_model.pt`), so its value is
part of the file and wire formats: old checkpoints load only while it stays the same.

The names are plain `str` constants, not an `enum.StrEnum`: they are pickled into checkpoints and
NVFlare messages as dictionary keys, where an enum member would be stored as a reference to this
class, so a checkpoint could no longer be read with `torch.load(weights_only=True)` or without FedSM
on the path, and its keys would change type from what earlier checkpoints hold.
"""

GLOBAL = "global"
PERSONALIZED = "personalized"  # one per client
SELECTOR = "selector"
MODEL_KINDS = (GLOBAL, PERSONALIZED, SELECTOR)

SELECTOR_MOMENTS = "selector_moments"  # the selector's averaged Adam moments, kept with the models


def personalized_key(client: str) -> str:
    """The key of `client`'s personalized model among keys of whole models (`personalized/<client>`)."""
    return f"{PERSONALIZED}/{client}"
