"""FedSM's default mode through the real code path, against FedSM as published written by hand.

One round of the tiny job runs in the NVFlare simulator: `FedSMController` and `FedSMLearner` on three
sites, with the VGG11 selector and the MONAI UNet at 32x32 and `selector_training` at its default,
`client_adam_on_server`. The server's `fedsm_state.pt` after that round is compared with the same
round computed here by hand (`published_fedsm`): each site trains its two UNets with `torch.optim.Adam`
on the Dice loss and steps its selector with a `torch.optim.Adam` that holds the averaged moments and
the site's own step count; the server takes the means, weighted by the sites' UNet steps, of the
global and selector differences and of the moments, and SoftPulls the personalized models.

The round is round 1, so that there are averaged moments to load: the job resumes from a state
written here, the persistor's seeded initial models (`initial_model_set`) with the selector and its
moments after a hand-written round 0 of the selector. The sites have no saved client state, so their
UNet optimizers start fresh, on both sides.

The same random draws: the learner seeds torch with `seed + round` and the training loader's
generator likewise. The selector's dropout is the only draw from torch's generator (validation runs in
eval mode, the UNets' dropout rate is 0, the loaders have generators of their own), so the hand-written
side seeds alike and trains the three models in the learner's order, on the loaders of
`load_site_data` (data loading is not under test). The same kernels: one torch thread on both sides
(`torch_threads`), and the Dice loss in MONAI's order of operations, so the UNets' training gives the
same bits; that matters, since the conv biases in front of instance norm have a true gradient of zero,
and Adam turns their rounding noise into steps of up to lr (1e-3 apart with another order of the sums).

Tolerance: the two sides differ only by float32 rounding. The server streams float32 sums in arrival
order, replays the clients' Adam steps from their gradients and gets the mean moments from sums of
g and g * g; the hand-written side steps `torch.optim.Adam` on each site and sums its results in site
order. Every array must agree within `RELATIVE_TOLERANCE` of its largest magnitude. Measured in three
runs (the arrival order varies): at most 9.3e-7 for the mean `exp_avg` (b1 * old + (1 - b1) * mean g
against the mean of torch's `lerp`), 2.3e-7 for every other kind, while the round changed each kind
by a quarter of its magnitude or more. The test takes about 2 minutes on 2 cores, most of it moving
VGG11's 0.5 GB of weights and moments.
"""

import json

import numpy as np
import pytest
import torch
from e2e_helpers import make_job, server_app, tiny_overrides
from monai.networks.nets import UNet
from published_fedsm import adam_from_moments, dice_loss, selector_loss, soft_pull
from tiny_runs import CLIENTS, run_simulator
from torch import nn

from fedsm.config import TrainConfig
from fedsm.core.model_set import ModelSet
from fedsm.data.site_data import load_site_data
from fedsm.flare.persistor import initial_model_set
from fedsm.io.checkpoint import load_checkpoint, model_set_from_checkpoint, model_set_to_checkpoint, save_checkpoint
from fedsm.job_config import package_code

ROUND = 1
SOFT_PULL_LAMBDA = 0.7  # the published value, and the job's default
RELATIVE_TOLERANCE = 1e-5


class VGG11(nn.Module):
    """torchvision's VGG11 without batch norm, with one input channel."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers, channels = [], 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11(num_classes: int) -> nn.Module:
    """Allocated without initializing (every weight is loaded before use)."""
    with torch.device("meta"):
        model = VGG11(num_classes)
    return model.to_empty(device="cpu")


def unet() -> nn.Module:
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                num_res_units=2)


def load(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})


def add_weighted(sums: dict[str, np.ndarray], arrays: dict[str, np.ndarray], weight: int) -> None:
    """`sums += weight * arrays`, name by name, in float32 (the sums of the selector are 0.5 GB each)."""
    for name, array in arrays.items():
        if name in sums:
            torch.from_numpy(sums[name]).add_(torch.from_numpy(array), alpha=weight)
        else:
            sums[name] = weight * array


def mean_in_place(sums: dict[str, np.ndarray], total: int, start: dict[str, np.ndarray] | None = None
                  ) -> dict[str, np.ndarray]:
    """`sums / total`, plus `start` where given, computed in the arrays of `sums`."""
    for name, value in sums.items():
        value /= total
        if start is not None:
            value += start[name]
    return sums


class PublishedSite:
    """One site of the published algorithm: its data, its two UNets with their own Adam, and how many
    steps its selector optimizer has taken."""

    def __init__(self, config: TrainConfig, client: str, label: int):
        self.config, self.client, self.label = config, client, label
        self.data = load_site_data(config, client)
        self.unets = {kind: unet() for kind in ("global", "personalized")}
        self.optimizers = {kind: torch.optim.Adam(model.parameters(), lr=config.learning_rate)
                           for kind, model in self.unets.items()}
        self.selector_steps = 0

    def train(self, round_number: int, models: ModelSet, selector: nn.Module):
        """The site's local training: UNet steps, global difference, personalized weights, selector
        difference and the selector optimizer's moments."""
        torch.manual_seed(self.config.seed + round_number)
        self.data.train_loader.generator.manual_seed(self.config.seed + round_number)
        start = {"global": models.global_model, "personalized": models.personalized[self.client]}
        trained = {}
        for kind, model in self.unets.items():
            load(model, start[kind])
            model.train()
            steps = 0
            for _ in range(self.config.local_epochs):
                for batch in self.data.train_loader:
                    self.optimizers[kind].zero_grad()
                    dice_loss(model(batch["image"]), batch["label"]).backward()
                    self.optimizers[kind].step()
                    steps += 1
            trained[kind] = {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}
        global_diff = {name: trained["global"][name] - models.global_model[name] for name in trained["global"]}
        selector_diff, moments = self.step_selector(selector, models.selector, models.selector_moments)
        return steps, global_diff, trained["personalized"], selector_diff, moments

    def step_selector(self, model: nn.Module, weights: dict[str, np.ndarray], moments: dict[str, np.ndarray]):
        """Full batch: the loss summed over every training image, one Adam step per selector epoch."""
        load(model, weights)
        model.train()
        optimizer = adam_from_moments(model, self.config.learning_rate_select, moments, self.selector_steps)
        for _ in range(self.config.selector_local_epochs):
            optimizer.zero_grad()
            for batch in self.data.selector_loader:
                selector_loss(model(batch["image"]), self.label).backward()
            optimizer.step()
            self.selector_steps += 1
        diff = {name: param.detach().numpy() - weights[name] for name, param in model.named_parameters()}
        trained = {f"{kind}/{name}": optimizer.state[param][kind].numpy()
                   for name, param in model.named_parameters() for kind in ("exp_avg", "exp_avg_sq")}
        return diff, trained


def resume_state(config: TrainConfig, sites: dict[str, PublishedSite]) -> ModelSet:
    """The seeded initial models at round 1: the selector and its moments after a hand-written round 0
    of the selector (weighted by the UNet steps each site takes in a round), the UNets as initialized."""
    initial = initial_model_set(config, CLIENTS)
    model = vgg11(config.select_num_classes)
    diff, moments, total = {}, {}, 0
    for site in sites.values():
        torch.manual_seed(config.seed)
        site_diff, site_moments = site.step_selector(model, initial.selector, {})
        weight = len(site.data.train_loader) * config.local_epochs
        add_weighted(diff, site_diff, weight)
        add_weighted(moments, site_moments, weight)
        total += weight
    moments = mean_in_place(moments, total)
    moments["step"] = np.asarray(1.0, dtype=np.float32)
    return ModelSet(global_model=initial.global_model, selector=mean_in_place(diff, total, initial.selector),
                    selector_moments=moments, personalized=initial.personalized, next_round=ROUND)


def published_round(start: ModelSet, config: TrainConfig, sites: dict[str, PublishedSite]) -> dict:
    """The round's new models as FedSM publishes them."""
    selector = vgg11(config.select_num_classes)
    global_sum, selector_sum, moment_sum, personalized, total = {}, {}, {}, {}, 0
    for client, site in sites.items():
        steps, global_diff, personalized[client], selector_diff, moments = site.train(ROUND, start, selector)
        add_weighted(global_sum, global_diff, steps)
        add_weighted(selector_sum, selector_diff, steps)
        add_weighted(moment_sum, moments, steps)
        total += steps
        del selector_diff, moments
    return {"global": mean_in_place(global_sum, total, start.global_model),
            "selector": mean_in_place(selector_sum, total, start.selector),
            "selector_moments": mean_in_place(moment_sum, total),
            "personalized": soft_pull(personalized, SOFT_PULL_LAMBDA)}


def flat(models: dict) -> dict[str, np.ndarray]:
    arrays = {f"{kind}/{name}": np.asarray(value) for kind in ("global", "selector", "selector_moments")
              for name, value in models[kind].items()}
    for client, weights in models["personalized"].items():
        arrays |= {f"personalized/{client}/{name}": np.asarray(value) for name, value in weights.items()}
    return arrays


def kind_of(key: str) -> str:
    parts = key.split("/")
    return "/".join(parts[:2]) if parts[0] in ("personalized", "selector_moments") else parts[0]


def agreement(saved: dict[str, np.ndarray], expected: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict:
    """Per model kind: the largest absolute difference, the largest difference relative to its array's
    largest magnitude, and the largest relative change the round made (so that a round that changed
    nothing cannot pass)."""
    worst: dict[str, dict[str, float]] = {}
    for key, value in expected.items():
        scale = max(float(np.abs(value).max()), np.finfo(np.float32).tiny)
        difference = float(np.abs(saved[key].astype(np.float64) - value).max())
        change = float(np.abs(value.astype(np.float64) - start[key]).max()) if key in start else scale
        entry = worst.setdefault(kind_of(key), {"abs": 0.0, "rel": 0.0, "change": 0.0})
        entry["abs"] = max(entry["abs"], difference)
        entry["rel"] = max(entry["rel"], difference / scale)
        entry["change"] = max(entry["change"], change / scale)
    return worst


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_simulated_round_of_the_default_mode_equals_fedsm_as_published(tiny_data, tmp_path, one_thread):
    resume = tmp_path / "resume" / "fedsm_state.pt"
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data, **{
        "train.selector": "vgg11",
        "train.torch_threads": 1,
        "server.num_rounds": ROUND + 1,
        "server.resume_from": str(resume),
        # how the server holds received arrays, and the evaluations after the last round: time only
        "workflow.tensor_disk_offload": False,
        "workflow.validate_final_models": False,
        "workflow.federated_evaluation": False,
    }))
    config = TrainConfig.from_file(job / "app" / "config" / "config_train.json")
    assert config.selector_training == "client_adam_on_server"  # the default, not set above
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    labels = server["workflows"][0]["args"]["client_id_label_mapping"]
    sites = {client: PublishedSite(config, client, labels[client]) for client in CLIENTS}
    save_checkpoint(resume, model_set_to_checkpoint(resume_state(config, sites)))
    # packaged again: the run stops if its copy is older than the source, which may have been edited since
    package_code(job)

    result = run_simulator(job, tmp_path / "ws", CLIENTS, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"aggregated {sorted(CLIENTS)}" in result.stdout

    start = model_set_from_checkpoint(load_checkpoint(resume), resume)
    expected = flat(published_round(start, config, sites))
    start = flat(model_set_to_checkpoint(start))
    saved = torch.load(server_app(tmp_path / "ws") / "fedsm_state.pt", weights_only=True)
    assert saved["next_round"] == ROUND + 1
    assert float(saved["selector_moments"].pop("step")) == ROUND + 1
    assert {site.selector_steps for site in sites.values()} == {ROUND + 1}  # each site's own count
    saved = flat(saved)
    assert sorted(saved) == sorted(expected)

    worst = agreement(saved, expected, start)
    report = {kind: {k: f"{v:.2e}" for k, v in entry.items()} for kind, entry in worst.items()}
    print("agreement per model kind:", report)  # shown with pytest -s
    for entry in worst.values():
        assert entry["rel"] <= RELATIVE_TOLERANCE, report
        assert entry["change"] >= 1e3 * RELATIVE_TOLERANCE, report
