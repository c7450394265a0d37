"""One site's training and validation data, checked before any work starts."""

import dataclasses
import logging

from monai.data import DataLoader

from ..config import TrainConfig, resolve_path
from .datalist import check_images_readable, datalist_file, load_datalist
from .loading import batches, make_dataset

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SiteData:
    """`train_loader`: shuffled batches of `batch_size` for the UNets; `selector_loader`: the same
    training slices in batches of `selector_batch_size` for the selector's full-batch gradient (a sum
    over images, so the batch size does not change it); `val_loader`: validation slices in batches of
    `selector_batch_size` (validation needs no gradient, so larger batches only save time)."""

    train_loader: DataLoader
    selector_loader: DataLoader
    val_loader: DataLoader
    num_training: int
    num_validation: int


def load_site_data(config: TrainConfig, client_name: str) -> SiteData:
    """Loaders of `client_name`'s training and validation splits, from the paths in `config`.

    Raises an error naming the file at fault for a missing or malformed datalist, a missing,
    unreadable or malformed image or mask (see `check_images_readable`), or an empty split, so a
    client fails before it trains anything. Accepted oddities (0/1 or empty masks) are logged as
    warnings naming the datalist.
    """
    base_dir = resolve_path(config.dataset_base_dir, "dataset_base_dir")
    path = datalist_file(resolve_path(config.datalist_json_path, "datalist_json_path"), client_name)
    datalist = load_datalist(path, base_dir, ("training", "validation"))
    for split in ("training", "validation"):
        if not datalist[split]:
            raise ValueError(f"{path}: the '{split}' split is empty")
        for warning in check_images_readable(datalist[split], f"{path} '{split}'"):
            logger.warning(warning)
    training, validation = (make_dataset(datalist[split], config.image_size, config.cache_dataset, config.num_workers)
                            for split in ("training", "validation"))
    workers, seed = config.num_workers, config.seed
    return SiteData(
        train_loader=batches(training, config.batch_size, True, workers, seed),
        selector_loader=batches(training, config.selector_batch_size, False, workers, seed),
        val_loader=batches(validation, config.selector_batch_size, False, workers, seed),
        num_training=len(datalist["training"]),
        num_validation=len(datalist["validation"]),
    )
