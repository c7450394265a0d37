"""Builders of tiny raw downloads in the real formats of the five prostate datasets.

Volumes are numpy arrays indexed (z, y, x), like `SimpleITK.GetArrayFromImage`. Geometry follows
DICOM/ITK (LPS): `direction` is a 3x3 matrix whose columns are the x, y, z index axes.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

IDENTITY = np.eye(3)
# Index x runs left->right (-L), index y runs posterior->anterior (-P), slices stack superior.
FLIPPED_XY = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Grid:
    """Voxel grid: shape (z, y, x), spacing (x, y, z) mm, origin (LPS mm), direction columns."""

    shape: tuple[int, int, int] = (4, 16, 16)
    spacing: tuple[float, float, float] = (0.5, 0.6, 3.0)
    origin: tuple[float, float, float] = (-4.0, -5.0, 10.0)
    direction: np.ndarray = field(default_factory=lambda: IDENTITY.copy())

    def lps_affine(self) -> np.ndarray:
        """4x4 map from (x, y, z) voxel index to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def ras_affine(self) -> np.ndarray:
        """The same map in the RAS convention of NIfTI/nibabel."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps_affine()


def phantom(grid: Grid, seed: int = 0) -> np.ndarray:
    """Random int16 intensities on `grid`."""
    return np.random.default_rng(seed).integers(0, 2000, size=grid.shape, dtype=np.int16)


def box_mask(grid: Grid, value: int = 1, z=slice(1, 3), y=slice(4, 12), x=slice(5, 11)) -> np.ndarray:
    """uint8 volume with a box of `value`."""
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[z, y, x] = value
    return mask


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    grid: Grid,
    patient_id: str = "P0",
    series_uid: str | None = None,
    description: str = "t2_tse_tra",
) -> list[Dataset]:
    """One MR DICOM file per slice with full geometry tags; returns the datasets written."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    row_dir, col_dir, normal = grid.direction[:, 0], grid.direction[:, 1], grid.direction[:, 2]
    datasets = []
    for k, plane in enumerate(volume):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^Test"
        ds.PatientBirthDate, ds.PatientSex = "19500101", "M"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "120000", "1", "1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.SeriesDescription = description
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(grid.origin) + k * grid.spacing[2] * normal]
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
        ds.SliceThickness = grid.spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.astype(np.int16).tobytes()
        ds.save_as(folder / f"1-{k + 1:02d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def write_dicom_seg(
    path: Path,
    source: list[Dataset],
    segments: dict[str, np.ndarray],
    descriptions: dict[str, str] | None = None,
    property_types: dict[str, Code] | None = None,
) -> None:
    """A binary DICOM-SEG over the `source` series, one segment per (label, (z, y, x) mask).

    `descriptions` and `property_types` map a label to its SegmentDescription and segmented property
    type (default: none, and SCT Prostate).
    """
    import highdicom as hd

    items = []
    for number, label in enumerate(segments, start=1):
        item = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=(property_types or {}).get(label, codes.SCT.Prostate),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        if descriptions and label in descriptions:
            item.SegmentDescription = descriptions[label]
        items.append(item)
    pixels = np.stack(list(segments.values()), axis=-1).astype(bool)
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=items,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def write_nrrd(path: Path, volume: np.ndarray, grid: Grid) -> None:
    """An LPS NRRD label map of a (z, y, x) volume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "space": "left-posterior-superior",
        "space directions": (grid.direction @ np.diag(grid.spacing)).T,
        "space origin": np.asarray(grid.origin, dtype=float),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(path), np.ascontiguousarray(volume.transpose(2, 1, 0)), header)


def write_mhd(path: Path, volume: np.ndarray, grid: Grid) -> None:
    """A MetaImage header plus .raw data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction.flatten().tolist())
    sitk.WriteImage(image, str(path))


def write_nifti(path: Path, volume_xyz: np.ndarray, grid: Grid) -> None:
    """A NIfTI of an (x, y, z[, c]) array with the RAS affine of `grid`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume_xyz, grid.ras_affine()), str(path))


def build_i2cvb(raw: Path, cases: dict[str, tuple[str, Grid]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`Raw/I2CVB/<vendor>/<patient folder>/{T2W,GT/prostate}`; returns (image, 0/1 mask) per case name.

    `cases` maps a patient folder name (spaces allowed) to (vendor, grid). Masks are stored 0/255.
    """
    truth = {}
    for number, (folder, (vendor, grid)) in enumerate(cases.items()):
        patient = raw / "I2CVB" / vendor / folder
        image, mask = phantom(grid, number), box_mask(grid)
        write_dicom_series(patient / "T2W", image, grid, folder)
        write_dicom_series(patient / "GT" / "prostate", mask.astype(np.int16) * 255, grid, folder)
        truth[folder.replace(" ", "_")] = (image, mask)
    return truth


def build_msd(raw: Path, cases: list[str], grid: Grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`Raw/MSD/Task05_Prostate/{imagesTr,labelsTr}`: 2-channel 4D images, labels 1 and 2."""
    task = raw / "MSD" / "Task05_Prostate"
    truth = {}
    for number, case in enumerate(cases):
        t2 = phantom(grid, number).astype(np.float32)
        adc = t2 + 5000.0
        write_nifti(task / "imagesTr" / f"{case}.nii.gz", np.stack([t2, adc], -1).transpose(2, 1, 0, 3), grid)
        label = box_mask(grid, 1)
        label[1:3, 4:8, 5:11] = 2
        write_nifti(task / "labelsTr" / f"{case}.nii.gz", label.transpose(2, 1, 0), grid)
        truth[case] = (t2, (label > 0).astype(np.uint8))
    return truth


def build_promise12(
    raw: Path, cases: list[str], grid: Grid, folder: str = "TrainingData_Part1"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`Raw/Promise12/<folder>/CaseXX.mhd` and `CaseXX_segmentation.mhd` (+ .raw)."""
    truth = {}
    for number, case in enumerate(cases):
        image = phantom(grid, number)
        mask = box_mask(grid)
        write_mhd(raw / "Promise12" / folder / f"{case}.mhd", image, grid)
        write_mhd(raw / "Promise12" / folder / f"{case}_segmentation.mhd", mask, grid)
        truth[case] = (image, mask)
    return truth


def build_nci_isbi_image(raw: Path, case: str, grid: Grid, seed: int = 0) -> Path:
    """A TCIA-style image folder `Raw/NCI_ISBI/Image/<manifest>/<collection>/<case>/<study>/<series>`."""
    collection = "PROSTATE-DIAGNOSIS" if case.startswith("ProstateDx") else "Prostate-3T"
    folder = raw / "NCI_ISBI" / "Image" / "manifest-1" / collection / case / "1.000000-study" / "3.000000-T2"
    write_dicom_series(folder, phantom(grid, seed), grid, case)
    return folder


PROSTATEX_STUDY = "07-07-2011-NA-MR prostaat kanker detectie WDSmc MCAPRODETW-05711"


def prostatex_dirs(raw: Path, case: str) -> tuple[Path, Path]:
    """The TCIA-style study folders of `case`: `Raw/PROSTATEx/{Image,Mask}/<manifest>/PROSTATEx/<case>/<study>`."""
    return tuple(
        raw / "PROSTATEx" / kind / manifest / "PROSTATEx" / case / PROSTATEX_STUDY
        for kind, manifest in (("Image", "manifest-1"), ("Mask", "manifest-2"))
    )


def build_prostatex(
    raw: Path, case: str, grid: Grid, segments: dict[str, np.ndarray], descriptions: dict[str, str] | None = None
) -> Path:
    """A sagittal and an axial T2 series (the axial one, phantom seed 1, under the SEG) and one DICOM-SEG.

    Returns the SEG path, `<mask study>/300.000000-Segmentation-1/1-1.dcm`.
    """
    image_study, mask_study = prostatex_dirs(raw, case)
    write_dicom_series(image_study / "3.000000-t2tsesag-87368", phantom(grid, 7), grid, case, description="t2_tse_sag")
    source = write_dicom_series(image_study / "4.000000-t2tsetra-00702", phantom(grid, 1), grid, case)
    seg_path = mask_study / "300.000000-Segmentation-1" / "1-1.dcm"
    write_dicom_seg(seg_path, source, segments, descriptions)
    return seg_path


def assert_converted(dataset: Path, site: str, case: str, grid: Grid, image: np.ndarray, mask: np.ndarray) -> None:
    """The converted NIfTI pair of `case` holds `image` (float32) and `mask` (uint8 0/1) on `grid`."""
    image_nii = nib.load(dataset / site / "Image" / f"{case}.nii.gz")
    mask_nii = nib.load(dataset / site / "Mask" / f"{case}.nii.gz")
    for nii in (image_nii, mask_nii):
        assert nii.shape == grid.shape[::-1]
        np.testing.assert_allclose(nii.affine, grid.ras_affine(), atol=1e-4)
    assert image_nii.get_data_dtype() == np.float32
    assert mask_nii.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image_nii.dataobj), image.transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(mask_nii.dataobj), mask.transpose(2, 1, 0))


def snapshot(folder: Path) -> dict[str, tuple[int, str] | None]:
    """Relative path -> (mtime_ns, sha256) of every file below `folder` (None for folders)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        if path.is_file()
        else None
        for path in sorted(folder.rglob("*"))
    }
