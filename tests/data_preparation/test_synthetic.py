import dataclasses
import itertools
import json

import numpy as np
import pytest

from data_preparation import synthetic
from data_preparation.datalist import SPLITS
from data_preparation.nifti_pairs import read_volume
from data_preparation.slicing import foreground_slices
from data_preparation.synthetic import SITE_PROFILES, case_rng, generate_case, generate_dataset


@pytest.fixture(scope="module")
def first_cases():
    return {site: generate_case(profile, case_rng(0, site, 0)) for site, profile in SITE_PROFILES.items()}


def test_same_seed_same_volume_different_seed_different():
    profile = SITE_PROFILES["MSD"]
    image, mask, affine = generate_case(profile, np.random.default_rng(5))
    image2, mask2, affine2 = generate_case(profile, np.random.default_rng(5))
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(affine, affine2)
    image3, mask3, _ = generate_case(profile, np.random.default_rng(6))
    assert image3.shape != image.shape or not np.array_equal(image3, image)
    assert mask3.shape != mask.shape or not np.array_equal(mask3, mask)


def test_volumes_look_like_the_specification(first_cases):
    for site, (image, mask, affine) in first_cases.items():
        profile = SITE_PROFILES[site]
        assert image.dtype == np.float32 and mask.dtype == np.uint8, site
        assert image.shape == mask.shape == (profile.matrix, profile.matrix, image.shape[2]), site
        assert 16 <= image.shape[2] <= 24, site
        assert set(np.unique(mask)) == {0, 1}, site
        assert 8 <= len(foreground_slices(image, mask)) <= 12, site
        assert image.min() >= 0 and 300 < np.percentile(image, 99) < 2600, site
        spacing = [profile.spacing_mm, profile.spacing_mm, profile.slice_thickness_mm]
        np.testing.assert_allclose(np.diag(affine)[:3], spacing)


def test_sites_differ_in_intensity_matrix_and_spacing(first_cases):
    p99 = {site: np.percentile(image, 99) for site, (image, _, _) in first_cases.items()}
    body_mean = {site: image[image > 0.1 * p99[site]].mean() for site, (image, _, _) in first_cases.items()}
    for a, b in itertools.combinations(first_cases, 2):
        assert abs(p99[a] / p99[b] - 1) > 0.1, (a, b)
        assert abs(body_mean[a] / body_mean[b] - 1) > 0.1, (a, b)
        assert SITE_PROFILES[a].matrix != SITE_PROFILES[b].matrix, (a, b)
        assert not np.allclose(np.diag(first_cases[a][2]), np.diag(first_cases[b][2])), (a, b)


def test_one_site_annotates_differently_dilated_masks():
    dilating = [site for site, profile in SITE_PROFILES.items() if profile.mask_dilation_vox]
    assert dilating == ["NCI_ISBI_3T"]
    profile = SITE_PROFILES["NCI_ISBI_3T"]
    image, dilated, _ = generate_case(profile, case_rng(0, "NCI_ISBI_3T", 1))
    plain_profile = dataclasses.replace(profile, mask_dilation_vox=0)
    plain_image, plain, _ = generate_case(plain_profile, case_rng(0, "NCI_ISBI_3T", 1))
    np.testing.assert_array_equal(image, plain_image)
    assert np.all(dilated >= plain)  # the organ is inside the annotation
    assert dilated.sum() > 1.2 * plain.sum()


def test_prostate_is_not_an_intensity_window(first_cases):
    """No single intensity window [low, high] segments the prostate well (best Dice < 0.6)."""
    for site, (image, mask, _) in first_cases.items():
        mask = mask.astype(bool)
        levels = np.quantile(image, np.linspace(0.0, 1.0, 25))
        best = 0.0
        for low, high in itertools.combinations(levels, 2):
            window = (image >= low) & (image <= high)
            overlap = np.count_nonzero(window & mask)
            best = max(best, 2 * overlap / (np.count_nonzero(window) + np.count_nonzero(mask)))
        assert best < 0.6, site


def test_generate_dataset_writes_readable_pairs(tmp_path):
    generate_dataset(tmp_path, ["I2CVB"], 2, seed=4)
    image, affine = read_volume(tmp_path / "dataset" / "I2CVB" / "Image" / "I2CVB_case01.nii.gz")
    mask, _ = read_volume(tmp_path / "dataset" / "I2CVB" / "Mask" / "I2CVB_case01.nii.gz")
    expected_image, expected_mask, expected_affine = generate_case(SITE_PROFILES["I2CVB"], case_rng(4, "I2CVB", 1))
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(affine, expected_affine)
    with pytest.raises(ValueError, match="unknown sites"):
        generate_dataset(tmp_path, ["NOPE"], 1, seed=0)


def test_cli_runs_the_whole_chain(tmp_path, capsys):
    output = tmp_path / "data"
    assert synthetic.main(["--output", str(output), "--cases-per-site", "3", "--with-unseen"]) == 0
    datalist_dir, dataset_2d = output / "datalist_2D", output / "dataset_2D"
    names = ["I2CVB", "MSD", "NCI_ISBI_3T", "All", "UNSEEN"]
    assert sorted(p.name for p in datalist_dir.iterdir()) == sorted(f"client_{name}.json" for name in names)
    datalists = {name: json.loads((datalist_dir / f"client_{name}.json").read_text()) for name in names}
    for name, datalist in datalists.items():
        for split in SPLITS:
            assert len({item["image"].split("/")[1] for item in datalist[split]}) >= 1, (name, split)
            for item in datalist[split]:
                assert (dataset_2d / item["image"]).is_file() and (dataset_2d / item["label"]).is_file()
    all_sites = {item["image"].split("/")[0] for split in SPLITS for item in datalists["All"][split]}
    assert all_sites == {"I2CVB", "MSD", "NCI_ISBI_3T"}
    printed = capsys.readouterr().out
    assert all(f"client_{name}" in printed for name in names)


def test_cli_reference_split_rule_needs_four_cases(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main(["--output", str(tmp_path), "--cases-per-site", "3", "--split-rule", "reference"])
    assert "at least 4 cases" in capsys.readouterr().err
    assert not (tmp_path / "dataset").exists()


def test_cli_refuses_to_replace_folders_it_did_not_make(tmp_path):
    (tmp_path / "dataset").mkdir()
    with pytest.raises(SystemExit):
        synthetic.main(["--output", str(tmp_path), "--cases-per-site", "3"])
    assert (tmp_path / "dataset").is_dir() and not (tmp_path / "dataset_2D").exists()
