"""Synthetic multi-site prostate T2 MRI, and the whole data chain on it.

Each site has a `SiteProfile`: matrix size and voxel spacing (stored in the NIfTI affine), intensity
scale, noise, smooth multiplicative bias field and prostate/muscle contrast, like different scanners
and protocols. NCI_ISBI_3T is imaged with a small field of view (0.7 mm, the body outline cut off) and
its annotators draw the outline 3 voxels (2 mm) outside the capsule (masks dilated in-plane), so a
site-specific model can beat the global one there. UNSEEN is a held-out fourth site
resembling none of the others (coarse matrix, thick slices, high noise, inverted prostate contrast).

Anatomy per case: a body ellipse with subcutaneous fat and textured muscle, fatty patches, a rectum
(dark wall and lumen) behind the prostate, a bright bladder above and in front of it, and the prostate:
a tapered, slightly lobulated, rotated ellipsoid with a heterogeneous central gland, a brighter
posterior peripheral zone, a dark capsule and a periprostatic fat halo. Volumes have 16-24 axial
slices, the prostate 8-12 of them. Arrays are in RAS+ axes with a diagonal affine.

CLI: `python -m data_preparation.synthetic --output DIR` writes DIR/dataset (3D NIfTI),
DIR/dataset_2D (PNG slices) and DIR/datalist_2D (datalist JSONs) and prints a summary. Its datalists
use the largest-remainder split rule unless `--split-rule reference` is given (see `datalist`): it gives
every split a case down to 3 cases per site, and the synthetic runs documented in this repository used it.
"""

import argparse
import json
import logging
import shutil
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_preparation.datalist import (
    LARGEST_REMAINDER_RULE,
    MERGED_NAME,
    REFERENCE_RULE,
    SPLIT_RULES,
    format_summary,
    write_datalists,
)
from data_preparation.nifti_pairs import write_volume
from data_preparation.slicing import slice_site
from fedsm.io.atomic import write_text_atomic
from fedsm.io.progress import progress

logger = logging.getLogger(__name__)

TRAINING_SITES = ("I2CVB", "MSD", "NCI_ISBI_3T")
UNSEEN_SITE = "UNSEEN"
DEFAULT_OUTPUT = Path("/tmp/nvflare/fedsm_data")
OUTPUT_FOLDERS = ("dataset", "dataset_2D", "datalist_2D")
MARKER_NAME = "synthetic_dataset.json"

# Tissue signal in units of the site's intensity scale (T2: fluid > fat > gland > muscle).
FAT, PELVIC_FAT, PERIPROSTATIC_FAT, MUSCLE = 1.0, 0.85, 0.8, 0.38
PERIPHERAL_ZONE, CAPSULE, RECTUM_WALL, RECTUM_LUMEN, BLADDER = 0.72, 0.25, 0.3, 0.1, 1.4


@dataclass(frozen=True)
class SiteProfile:
    """How one site's scanner, protocol and annotators shape its images and masks."""

    matrix: int  # in-plane voxels per side
    spacing_mm: float  # in-plane voxel size
    slice_thickness_mm: float
    n_slices: tuple[int, int]  # inclusive range of axial slices per volume
    intensity_scale: float  # raw value of fat signal
    noise: float  # Rician noise std relative to intensity_scale
    bias: float  # amplitude of the smooth multiplicative bias field
    prostate_contrast: float  # central gland signal relative to muscle
    mask_dilation_vox: int = 0  # annotation drawn this many voxels outside the prostate, in-plane


SITE_PROFILES: dict[str, SiteProfile] = {
    "I2CVB": SiteProfile(128, 1.15, 3.0, (18, 22), 650.0, 0.03, 0.15, 1.25),
    "MSD": SiteProfile(160, 1.0, 3.6, (16, 20), 1150.0, 0.02, 0.35, 1.5),
    "NCI_ISBI_3T": SiteProfile(144, 0.7, 4.0, (16, 20), 900.0, 0.055, 0.2, 1.1, mask_dilation_vox=3),
    UNSEEN_SITE: SiteProfile(96, 1.9, 4.5, (16, 18), 1500.0, 0.08, 0.45, 0.75),
}


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise (filtered in the Fourier domain), zero mean, unit std, float32."""
    spectrum = np.fft.rfftn(rng.standard_normal(shape, dtype=np.float32))
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    gain = np.exp(-2.0 * np.pi**2 * sum((s * f) ** 2 for s, f in zip(sigma_vox, grids)))
    field = np.fft.irfftn(spectrum * gain.astype(np.float32), s=shape, axes=range(len(shape)))
    return ((field - field.mean()) / field.std()).astype(np.float32)


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field in [1 - amplitude, 1 + amplitude]: a random quadratic polynomial."""
    u, v, w = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    terms = [u, v, w, u * u, v * v, u * v]
    weights = rng.uniform(-1.0, 1.0, len(terms))
    weights /= np.abs(weights).sum()
    return 1.0 + amplitude * sum(c * t for c, t in zip(weights.astype(np.float32), terms))


def dilate_in_plane(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of each axial slice of a [x, y, z] mask by a disc of `radius` voxels."""
    nx, ny = mask.shape[:2]
    padded = np.pad(mask.astype(bool), ((radius, radius), (radius, radius), (0, 0)))
    out = np.zeros(mask.shape, dtype=bool)
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                out |= padded[radius + dx : radius + dx + nx, radius + dy : radius + dy + ny]
    return out


def affine_for(profile: SiteProfile, shape: tuple[int, int, int]) -> np.ndarray:
    """Diagonal RAS+ affine with the profile's spacing, volume centred on the world origin."""
    spacing = np.array([profile.spacing_mm, profile.spacing_mm, profile.slice_thickness_mm])
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2.0
    return affine


def generate_case(profile: SiteProfile, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic T2 volume: (image float32 [x, y, z], mask uint8 0/1, 4x4 RAS+ affine)."""
    nz = int(rng.integers(profile.n_slices[0], profile.n_slices[1] + 1))
    shape = (profile.matrix, profile.matrix, nz)
    affine = affine_for(profile, shape)
    x, y, z = np.ix_(*(np.float32(affine[k, 3] + affine[k, k] * np.arange(n)) for k, n in enumerate(shape)))
    in_plane_sigma = 3.0 / profile.spacing_mm
    texture = smooth_noise(rng, shape, (in_plane_sigma, in_plane_sigma, 0.7))
    blobs = smooth_noise(rng, shape, (3 * in_plane_sigma, 3 * in_plane_sigma, 1.0))

    # Body: textured muscle inside, subcutaneous fat ring, fatty patches.
    body_a, body_b, body_y = rng.uniform(85, 105), rng.uniform(65, 80), rng.uniform(-5, 5)
    body_r = np.sqrt((x / body_a) ** 2 + ((y - body_y) / body_b) ** 2)
    tissue = np.where(body_r <= 1.0, MUSCLE + 0.06 * texture, 0.0)
    tissue = np.where((blobs > 1.0) & (body_r <= 1.0), PELVIC_FAT + 0.05 * texture, tissue)
    tissue = np.where((body_r <= 1.0) & (body_r > 1.0 - rng.uniform(10, 18) / body_b), FAT + 0.05 * texture, tissue)

    # Prostate: rotated, tapered towards the apex (inferior), lobulated in-plane.
    a, b = rng.uniform(19, 26), rng.uniform(14, 19)
    c = profile.slice_thickness_mm * rng.uniform(4.0, 6.0)
    px, py, pz = rng.uniform(-8, 8), rng.uniform(-6, 4), profile.slice_thickness_mm * rng.uniform(-1, 1)
    angle = rng.uniform(-0.2, 0.2)
    u = np.cos(angle) * (x - px) + np.sin(angle) * (y - py)
    v = -np.sin(angle) * (x - px) + np.cos(angle) * (y - py)
    w = (z - pz) / c
    taper = 1.0 + rng.uniform(0.1, 0.25) * np.clip(w, -1.0, 1.0)
    theta = np.arctan2(v / b, u / a)
    lobes = 1.0 + rng.uniform(0, 0.06) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    lobes += rng.uniform(0, 0.06) * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt(((u / a) ** 2 + (v / b) ** 2) / (taper * lobes) ** 2 + w**2)
    prostate = rho <= 1.0

    # Surroundings, painted in order: periprostatic fat, rectum, bladder.
    tissue = np.where((rho > 1.0) & (rho <= 1.3) & (blobs > -0.3), PERIPROSTATIC_FAT + 0.05 * texture, tissue)
    rx, ry = px + rng.uniform(-4, 4), py - b - rng.uniform(11, 15)
    rectum_r = np.sqrt(((x - rx) / rng.uniform(12, 16)) ** 2 + ((y - ry) / rng.uniform(9, 12)) ** 2)
    tissue = np.where(rectum_r <= 1.0, np.where(rectum_r < 0.6, RECTUM_LUMEN, RECTUM_WALL) + 0.03 * texture, tissue)
    bx, by, bz = px + rng.uniform(-5, 5), py + b * rng.uniform(0.9, 1.3), pz + c * rng.uniform(0.8, 1.1)
    bladder_r = np.sqrt(
        ((x - bx) / rng.uniform(28, 40)) ** 2
        + ((y - by) / rng.uniform(20, 30)) ** 2
        + ((z - bz) / rng.uniform(18, 26)) ** 2
    )
    tissue = np.where(bladder_r <= 1.0, BLADDER + 0.02 * texture, tissue)

    # Prostate interior: heterogeneous central gland, posterior peripheral zone, dark capsule.
    central_gland = MUSCLE * profile.prostate_contrast + 0.08 * texture
    gland = np.where((rho > 0.55) & (v < 0.15 * b), PERIPHERAL_ZONE + 0.05 * texture, central_gland)
    tissue = np.where(prostate, np.where(rho > 0.9, CAPSULE, gland), tissue)

    signal = profile.intensity_scale * np.clip(tissue, 0.0, None) * bias_field(rng, shape, profile.bias)
    noise_std = profile.noise * profile.intensity_scale
    real = signal + rng.normal(0.0, noise_std, shape).astype(np.float32)
    imaginary = rng.normal(0.0, noise_std, shape).astype(np.float32)
    image = np.sqrt(real**2 + imaginary**2).astype(np.float32)

    mask = dilate_in_plane(prostate, profile.mask_dilation_vox) if profile.mask_dilation_vox else prostate
    return image, mask.astype(np.uint8), affine


def case_rng(seed: int, site: str, index: int) -> np.random.Generator:
    """Generator of one case: depends only on (seed, site, case index), not on the other cases."""
    return np.random.default_rng([seed, zlib.crc32(site.encode()), index])


def generate_dataset(root: str | Path, sites: Sequence[str], cases_per_site: int, seed: int) -> None:
    """Write root/dataset/<site>/{Image,Mask}/<site>_caseNN.nii.gz for every site."""
    unknown = [site for site in sites if site not in SITE_PROFILES]
    if unknown:
        raise ValueError(f"unknown sites {unknown}; known: {sorted(SITE_PROFILES)}")
    for site in sites:
        site_dir = Path(root) / "dataset" / site
        for index in progress(range(cases_per_site), desc=f"generating {site}", unit="case"):
            image, mask, affine = generate_case(SITE_PROFILES[site], case_rng(seed, site, index))
            case = f"{site}_case{index:02d}"
            write_volume(site_dir / "Image" / f"{case}.nii.gz", image, affine)
            write_volume(site_dir / "Mask" / f"{case}.nii.gz", mask, affine)
        logger.info("%s: %d cases written to %s", site, cases_per_site, site_dir)


def _prepare_output(output: Path, parameters: dict) -> None:
    """Clear the output folders of an earlier synthetic run; refuse to touch folders not made here."""
    made_here = (output / MARKER_NAME).is_file()
    for name in OUTPUT_FOLDERS:
        folder = output / name
        if folder.exists():
            if not made_here:
                raise FileExistsError(f"{folder} exists but {output / MARKER_NAME} does not: not replacing it")
            shutil.rmtree(folder)
            logger.info("removed the earlier synthetic %s", folder)
    write_text_atomic(output / MARKER_NAME, json.dumps(parameters, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: generate the synthetic 3D dataset, slice it to 2D PNGs and write the datalists."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"output folder (default {DEFAULT_OUTPUT})")
    parser.add_argument("--sites", nargs="+", choices=TRAINING_SITES, default=list(TRAINING_SITES))
    parser.add_argument("--cases-per-site", type=int, default=8, help="at least 3 (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="non-negative (default 0)")
    parser.add_argument("--with-unseen", action="store_true", help=f"also make the held-out site {UNSEEN_SITE}")
    parser.add_argument(
        "--split-rule",
        choices=SPLIT_RULES,
        default=LARGEST_REMAINDER_RULE,
        help=f"how cases are split (default {LARGEST_REMAINDER_RULE}: every split gets a case from 3 cases a site, "
        "and the documented synthetic runs used it; reference needs 4)",
    )
    args = parser.parse_args(argv)
    if args.cases_per_site < 3:
        parser.error("--cases-per-site must be at least 3 (one case per split)")
    if args.split_rule == REFERENCE_RULE and args.cases_per_site < 4:
        parser.error(f"--split-rule {REFERENCE_RULE} needs at least 4 cases per site (3 leave testing empty)")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    if len(set(args.sites)) != len(args.sites):
        parser.error("--sites has duplicates")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sites = list(args.sites)
    all_sites = sites + ([UNSEEN_SITE] if args.with_unseen else [])
    parameters = {"sites": all_sites, "cases_per_site": args.cases_per_site, "seed": args.seed}
    try:
        _prepare_output(args.output, parameters)
    except FileExistsError as err:
        parser.error(str(err))
    logger.info(
        "generating %d cases per site for %s (seed %d) in %s", args.cases_per_site, all_sites, args.seed, args.output
    )
    generate_dataset(args.output, all_sites, args.cases_per_site, args.seed)

    dataset_2d, datalist_dir = args.output / "dataset_2D", args.output / "datalist_2D"
    for site in all_sites:
        result = slice_site(args.output / "dataset", site, dataset_2d)
        if result.failed:
            raise RuntimeError(f"{site}: slicing failed: {result.failed}")
    write_datalists(dataset_2d, datalist_dir, sites, seed=args.seed, split_rule=args.split_rule)
    if args.with_unseen:
        write_datalists(
            dataset_2d, datalist_dir, [UNSEEN_SITE], seed=args.seed, merge=False, split_rule=args.split_rule
        )
    print(format_summary(datalist_dir, sites + [MERGED_NAME] + ([UNSEEN_SITE] if args.with_unseen else [])))
    logger.info("dataset root %s, datalists in %s", dataset_2d, datalist_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
