"""One site's training and validation data, checked before any work starts."""

import dataclasses
import logging

from monai.data import DataLoader

from ..config import TrainConfig, resolve_path
from .datalist import check_images_readable, datalist_file, load_datalist
from .loading import make_loader

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SiteData:
    train_loader: DataLoader
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
    loader_args = dict(image_size=config.image_size, batch_size=config.batch_size, cache_rate=config.cache_dataset,
                       num_workers=config.num_workers, seed=config.seed)
    return SiteData(
        train_loader=make_loader(datalist["training"], shuffle=True, **loader_args),
        val_loader=make_loader(datalist["validation"], shuffle=False, **loader_args),
        num_training=len(datalist["training"]),
        num_validation=len(datalist["validation"]),
    )
