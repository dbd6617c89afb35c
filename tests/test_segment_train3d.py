"""Own-engine 3D training (issue 23 item 3): target-spacing resampling, spacing-aware boundary loss with distance maps
made once per case, MONAI augmentation applied jointly, iterations/width/k-fold options, and PET+CT input.

Synthetic data is physically plausible and tiny: a PET (SUV, 3 x 3 x 6 mm voxels: thick slices) and a CT of the same
patient on its own 2x finer grid, a 12 mm-radius lesion hot on PET (SUV 8 vs 1) and slightly dense on CT (70 vs 40 HU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nmkit.cli import main
from nmkit.dataset import MaskRef, new_table, write_dataset
from nmkit.io.image import Image, Mask
from nmkit.io.volume_files import read_volume, write_volume

# one torch thread (the machine is shared); one xdist worker for the module (its tests share one trained bundle)
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("segment_train3d")]


def _study(rng: np.random.Generator, shape=(10, 24, 24), spacing=(3.0, 3.0, 6.0)) -> tuple[Image, Image, Mask]:
    """PET (SUV) with a hot sphere of radius 12 mm, its label map, and a CT of the same body on a 2x finer grid."""
    centre = np.array([36.0, 36.0, 30.0]) + rng.uniform(-6, 6, 3)  # mm, x y z from the origin
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    pos = np.stack([xx * spacing[0], yy * spacing[1], zz * spacing[2]], -1)
    lesion = np.linalg.norm(pos - centre, axis=-1) <= 12.0
    pet = Image(array=(1.0 + 7.0 * lesion + rng.normal(0, 0.3, shape)).astype(np.float32), spacing=spacing,
                origin=(-100.0, -80.0, 40.0), modality="PT", units="g/ml")
    fine = tuple(s / 2 for s in spacing)
    cz, cy, cx = np.mgrid[:2 * shape[0], :2 * shape[1], :2 * shape[2]]
    cpos = np.stack([cx * fine[0], cy * fine[1], cz * fine[2]], -1) - np.array(fine) / 2  # same field of view
    ct_lesion = np.linalg.norm(cpos - centre, axis=-1) <= 12.0
    ct_origin = tuple(o - f / 2 for o, f in zip(pet.origin, fine))
    ct = Image(array=(40.0 + 30.0 * ct_lesion + rng.normal(0, 10, ct_lesion.shape)).astype(np.float32), spacing=fine,
               origin=ct_origin, modality="CT", units="HU")
    return pet, ct, Mask.like(pet, lesion.astype(np.uint8), labels={1: "lesion"})


def _dataset(folder, n: int = 4, splits=("train", "train", "val", "test"), with_ct: bool = True, seed: int = 4, folds=None):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pet, ct, mask = _study(rng)
        pid, study = f"P{i}", f"1.2.3.{i}"
        pet_path = write_volume(pet, folder / f"p{i}_pet.nii.gz")
        mask_path = write_volume(mask, folder / f"p{i}_gtv.nii.gz")
        rows.append({"case_id": f"p{i}_pt", "patient_id": pid, "study_uid": study, "modality": "PT", "image": str(pet_path),
                     "masks": [MaskRef(file=str(mask_path), structure="lesion", label=1)], "split": splits[i % len(splits)],
                     "fold": "" if folds is None else folds[i]})
        if with_ct:
            rows.append({"case_id": f"p{i}_ct", "patient_id": pid, "study_uid": study, "modality": "CT",
                         "image": str(write_volume(ct, folder / f"p{i}_ct.nii.gz")), "split": splits[i % len(splits)]})
    write_dataset(new_table(rows), folder / "dataset.csv")
    return folder / "dataset.csv"


# --- resampling ---------------------------------------------------------------------------------------------------

def test_resampling_round_trip_keeps_geometry_and_labels():
    from nmkit.segment.preprocess import resample_array, resample_labels, resample_to_spacing, spacing_grid

    pet, _, mask = _study(np.random.default_rng(1))
    rot = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # a non-identity direction
    pet = Image(array=pet.array, spacing=pet.spacing, origin=pet.origin, direction=tuple(rot.ravel()), modality="PT")
    mask = Mask.like(pet, mask.array, labels={1: "lesion"})
    grid = spacing_grid(pet, (2.0, 2.0, 2.0))
    assert grid.spatial_shape == (30, 36, 36) and grid.spacing == (2.0, 2.0, 2.0)
    # the field of view stays centred: the volume centre is the same physical point
    centre = lambda im: im.index_to_physical((np.array(im.spatial_shape[::-1]) - 1)[None] / 2)[0]  # noqa: E731
    assert np.allclose(centre(grid), centre(pet), atol=1e-6)
    # a voxel of the target grid samples the physical point it sits at: linear data resample exactly
    ramp = pet.with_array(np.fromfunction(lambda z, y, x: 0.5 * x + 2 * y - 3 * z, pet.spatial_shape).astype(np.float32))
    fine = resample_to_spacing(ramp, (2.0, 2.0, 2.0))
    idx = np.array([[5.0, 7.0, 11.0]])  # x y z on the fine grid
    src = ramp.physical_to_index(fine.index_to_physical(idx))[0]  # x y z on the original grid (inside)
    assert fine.array[11, 7, 5] == pytest.approx(0.5 * src[0] + 2 * src[1] - 3 * src[2], abs=1e-3)
    cubic = resample_to_spacing(ramp, (2.0, 2.0, 2.0), "bspline")  # B-splines reproduce a ramp too (inside)
    assert cubic.array[11, 7, 5] == pytest.approx(fine.array[11, 7, 5], abs=1e-2)
    # and back out: the original grid again, values within interpolation error
    back = resample_array(fine.array, fine, ramp, order=1)
    assert back.shape == ramp.array.shape
    assert np.abs(back - ramp.array)[1:-1, 1:-1, 1:-1].max() < 1e-3
    # labels: label-aware resampling keeps the lesion volume within 10 % and its centre within 1 mm
    labels = resample_labels(mask.array.astype(np.int64), mask, grid)
    volume = lambda a, im: a.sum() * np.prod(im.spacing)  # noqa: E731
    assert volume(labels, grid) == pytest.approx(volume(mask.array, mask), rel=0.1)
    com = lambda a, im: im.index_to_physical(np.argwhere(a)[:, ::-1].mean(0)[None])[0]  # noqa: E731
    assert np.linalg.norm(com(labels, grid) - com(mask.array, pet)) < 1.0
    roundtrip = resample_labels(labels, grid, mask)
    assert (roundtrip == mask.array).mean() > 0.99


def test_median_spacing_follows_the_fingerprint_rule():
    from nmkit.segment.preprocess import median_spacing

    assert median_spacing([(1.0, 1.0, 2.0), (0.8, 0.8, 2.5), (1.2, 1.2, 2.0)]) == (1.0, 1.0, 2.0)
    # thick slices (median 5 mm > 3 x 0.9 mm): the slice axis takes the 10th percentile, not the median
    spacing = median_spacing([(0.9, 0.9, 5.0)] * 4 + [(0.9, 0.9, 1.5)])
    assert spacing[:2] == (0.9, 0.9) and 1.5 < spacing[2] < 5.0


# --- boundary loss ------------------------------------------------------------------------------------------------

def test_boundary_loss_on_an_anisotropic_grid_uses_the_true_spacing(tmp_path):
    """Acceptance: the boundary loss the sampler feeds equals the loss from a distance map made with the true voxel
    spacing on the whole case, cropped like the patch (and differs from the voxel-unit map of the patch)."""
    from nmkit.segment.data import Case
    from nmkit.segment.losses import BoundaryLoss, signed_distance_map
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig, _Sampler

    spacing_xyz = (0.98, 0.98, 3.27)  # MR: 0.98 mm in plane, 3.27 mm between slices
    zz, yy, xx = np.mgrid[:16, :32, :32]
    label = ((((xx - 16) * 0.98) ** 2 + ((yy - 15) * 0.98) ** 2 + ((zz - 8) * 3.27) ** 2) <= 9.0**2).astype(np.int64)
    image = Image(array=(zz * 10000 + yy * 100 + xx).astype(np.float32), spacing=spacing_xyz)  # each voxel says where it is
    case = Case(case_id="mr", image=image, label=label)
    prep = Preprocessing(normalisation="zscore", spatial_dims=3, patch_size=(8, 16, 16))
    config = TrainConfig(loss="dice-boundary", labels={1: "tumour"}, augmentation={"kinds": ()})
    sampler = _Sampler([case], prep, config, np.random.default_rng(0))
    x, y, maps = sampler.sample(0)
    # where did the patch come from: its first voxel's value names its position in the whole case
    full = sampler.case_input(0)[0]
    z, r, c = np.argwhere(np.isclose(full, float(x[0, 0, 0, 0]), rtol=0, atol=1e-6))[0]
    assert np.array_equal(full[z:z + 8, r:r + 16, c:c + 16], x[0].numpy()) and np.array_equal(label[z:z + 8, r:r + 16, c:c + 16], y[0].numpy())
    truth = signed_distance_map(label == 1, (3.27, 0.98, 0.98))[z:z + 8, r:r + 16, c:c + 16]
    assert np.allclose(maps[0].numpy(), truth, atol=1e-5)
    logits = torch.randn(1, 2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = BoundaryLoss()(logits, maps[None])
    assert float(loss) == pytest.approx(float(BoundaryLoss()(logits, torch.from_numpy(truth)[None, None])), rel=1e-6)
    voxels = signed_distance_map(y[0].numpy() == 1)  # the old per-patch map in voxel units
    assert abs(float(BoundaryLoss()(logits, torch.from_numpy(voxels)[None, None])) - float(loss)) > 0.05 * abs(float(loss))


def test_2d_boundary_maps_use_the_pixel_spacing():
    """2D too: the maps come from the whole image with its pixel spacing (here 1 x 3 mm), in mm, flipped with it."""
    from nmkit.segment.data import Case
    from nmkit.segment.losses import signed_distance_map
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig, _Sampler

    yy, xx = np.mgrid[:24, :32]
    label = ((((xx - 14) * 1.0) ** 2 + ((yy - 12) * 3.0) ** 2) <= 15.0**2).astype(np.int64)
    case = Case(case_id="planar", image=Image(array=(10 + 90 * label).astype(np.float32), spacing=(1.0, 3.0)), label=label)
    prep = Preprocessing(normalisation="zscore", spatial_dims=2, target_size=(24, 32))
    truth = signed_distance_map(label == 1, (3.0, 1.0))
    for flips, expected in (((), truth), ((-1,), truth[:, ::-1])):
        config = TrainConfig(loss="dice-boundary", labels={1: "organ"}, flip_axes=flips)
        rng = np.random.default_rng(1)
        while True:  # a draw that flips when flips are asked for
            x, target, maps = _Sampler([case], prep, config, rng).sample(0)
            if not flips or torch.equal(target[1], torch.from_numpy(np.ascontiguousarray(label[:, ::-1])).float()):
                break
        assert np.allclose(maps[0].numpy(), expected, atol=1e-4)


# --- augmentation -------------------------------------------------------------------------------------------------

def test_augmentation_moves_image_channels_labels_and_maps_together():
    from nmkit.segment.augment import AugmentConfig, Augmenter, crop_size

    config = AugmentConfig(kinds=("flip", "rotate", "scale", "elastic"), probability=1.0, flip_axes=(0, 1, 2))
    patch = (12, 20, 20)
    size = crop_size(config, patch)
    assert all(s > p for s, p in zip(size, patch))
    zz, yy, xx = np.mgrid[:size[0], :size[1], :size[2]]
    blob = ((zz - size[0] / 2) ** 2 / 20 + (yy - size[1] / 2 - 2) ** 2 / 40 + (xx - size[2] / 2 + 3) ** 2 / 30) <= 1
    image = np.stack([blob * 10.0, blob * -5.0 + 1.0]).astype(np.float32)  # two channels (PET-like, CT-like)
    label = blob.astype(np.int64)[None]
    maps = np.stack([blob * 3.0]).astype(np.float32)
    outs = [Augmenter(config, patch, seed=s)(image, label, maps) for s in (7, 7, 8)]
    x, y, m = outs[0]
    assert tuple(x.shape) == (2, *patch) and tuple(y.shape) == (1, *patch) and y.dtype == torch.int64
    assert set(np.unique(y.numpy())) <= {0, 1} and y.sum() > 0
    # aligned: every channel and the map agree with the label except on the one-voxel interpolation rim
    for channel, level in ((x[0], 5.0), (-x[1] + 1.0, 2.5), (m[0], 1.5)):
        assert ((channel > level).numpy() == (y[0] == 1).numpy()).mean() > 0.97
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])  # seeded
    assert not torch.equal(outs[0][0], outs[2][0])  # another seed, another patch
    noisy = Augmenter(AugmentConfig(kinds=("gamma", "noise"), probability=1.0), patch, seed=1)
    xi, yi, _ = noisy(image[:, :12, :20, :20], label[:, :12, :20, :20])
    assert torch.equal(yi, torch.from_numpy(label[:, :12, :20, :20]))  # intensity-only: labels untouched
    assert not torch.allclose(xi, torch.from_numpy(image[:, :12, :20, :20]))


# --- k-fold and CLI -----------------------------------------------------------------------------------------------

def test_patient_level_folds_keep_patients_together():
    from nmkit.segment.data import Case
    from nmkit.segment.train import assign_folds

    img = Image(array=np.zeros((2, 2, 2), np.float32), spacing=(1.0, 1.0, 1.0))
    cases = [Case(f"c{i}", img, np.zeros((2, 2, 2), np.int64), patient_id=f"P{i // 2}") for i in range(10)]
    folds = assign_folds(cases, 3, seed=2)
    assert sorted(set(folds)) == [0, 1, 2]
    assert all(folds[2 * p] == folds[2 * p + 1] for p in range(5))
    assert assign_folds(cases, 3, seed=2) == folds
    with pytest.raises(ValueError, match="at least 6 patients"):
        assign_folds(cases, 6)
    for c, f in zip(cases, [0, 1] * 5):
        c.fold = str(f)
    assert assign_folds(cases, None) == [0, 1] * 5  # the fold column wins


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def pet_ct_folds(tmp_path_factory):
    """One tiny 2-fold PET+CT bundle (spacing auto, width 4, 2 iterations), trained once through the CLI."""
    folder = tmp_path_factory.mktemp("petct")
    manifest = _dataset(folder / "data")
    out = folder / "bundle"
    code = main(["train", str(manifest), "--out", str(out), "--dims", "3", "--size", "16", "16", "16", "--network", "attention-unet",
                 "--channels", "PT", "CT", "--spacing", "auto", "--kfold", "2", "--epochs", "1", "--iterations", "2",
                 "--batch-size", "1", "--width", "4", "--device", "cpu", "--labels", "1=lesion", "--augment", "flip", "rotate", "gamma"])
    assert code == 0
    return folder, manifest, out


def test_kfold_two_channel_train_then_predict(pet_ct_folds, capsys):
    """PET+CT, --spacing auto, 2 folds, --width, --iterations through the CLI: the bundle records channels,
    normalisations, spacing and the ensemble; predict on the PET/CT rows gives a mask on the PET grid."""
    from nmkit.segment.bundle import load_bundle, load_models

    folder, manifest, out = pet_ct_folds
    desc = json.loads((out / "bundle.json").read_text())
    assert desc["channels"] == ["PT", "CT"] and desc["network"]["in_channels"] == 2
    assert desc["preprocessing"]["channel_normalisations"] == ["suv", "window"]
    assert desc["preprocessing"]["target_spacing_mm"] == [3.0, 3.0, 6.0]  # the median of the training PET grids
    assert desc["network"]["options"]["channels"] == [4, 8, 16, 32]
    assert desc["training"]["iterations_per_epoch"] == 2
    assert desc["training"]["augmentation"]["kinds"] == ["flip", "rotate", "gamma"]
    assert desc["ensemble"]["folds"] == [0, 1] and len(desc["ensemble"]["members"]) == 2
    assert all((out / m).exists() for m in desc["ensemble"]["members"])
    folds = desc["validation"]["folds"]
    assert sorted(set(folds.values())) == [0, 1] and len(folds) == 3  # train + val rows, test kept out
    bundle = load_bundle(out, device="cpu")
    models = load_models(bundle)
    assert len(models) == 2 and bundle.channels == ["PT", "CT"] and bundle.folds == [0, 1]
    assert not torch.equal(next(models[0].parameters()), next(models[1].parameters()))
    pred = folder / "pred"
    code, cap = _run(["predict", str(out), str(manifest), "--split", "test", "--out", str(pred), "--device", "cpu"], capsys)
    assert code == 0, cap.err
    mask = read_volume(pred / "p3_pt.nii.gz")
    pet = read_volume(folder / "data" / "p3_pet.nii.gz")
    assert mask.spatial_shape == pet.spatial_shape and np.allclose(mask.spacing, pet.spacing) and np.allclose(mask.origin, pet.origin)


def test_bundle_channels_must_match_the_manifest(pet_ct_folds, tmp_path, capsys):
    """A PET+CT bundle on a case table without CT rows: one line naming the missing channel; a fold's weights
    missing: one line naming the file."""
    import shutil

    _, _, out = pet_ct_folds
    pet_only = _dataset(tmp_path / "pet_only", n=1, splits=("test",), with_ct=False)
    code, cap = _run(["predict", str(out), str(pet_only), "--out", str(tmp_path / "pred")], capsys)
    assert code != 0 and "no row of modality CT" in cap.err and len(cap.err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "fold_1" / "model.safetensors").unlink()
    code, cap = _run(["predict", str(broken), str(pet_only), "--out", str(tmp_path / "pred2")], capsys)
    assert code != 0 and "fold_1/model.safetensors missing" in cap.err and len(cap.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_channel_model_learns_through_resampling(tmp_path, capsys):
    """A real (small) training: PET+CT resampled to 2 x 2 x 4 mm, predicted back onto the 3 x 3 x 6 mm PET grid of
    unseen studies, overlaps the truth (Dice > 0.8; 0.99 seen here). Checks the resampling in and out end to end."""
    manifest = _dataset(tmp_path / "data", n=8, splits=("train",) * 5 + ("val", "test", "test"))
    out = tmp_path / "bundle"
    code, cap = _run(["train", str(manifest), "--out", str(out), "--dims", "3", "--size", "16", "32", "32", "--network", "attention-unet",
                      "--channels", "PT", "CT", "--spacing", "2", "2", "4", "--epochs", "10", "--iterations", "4", "--batch-size", "2",
                      "--width", "8", "--lr", "5e-3", "--device", "cpu", "--labels", "1=lesion"], capsys)
    assert code == 0, cap.err
    code, cap = _run(["predict", str(out), str(manifest), "--out", str(tmp_path / "pred"), "--device", "cpu"], capsys)
    assert code == 0, cap.err
    for i in (6, 7):
        pred = read_volume(tmp_path / "pred" / f"p{i}_pt.nii.gz").array > 0
        truth = read_volume(tmp_path / "data" / f"p{i}_gtv.nii.gz").array > 0
        assert pred.shape == truth.shape
        assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.8


@pytest.mark.parametrize("argv, message", [
    (["--dims", "3", "--spacing", "1", "2"], "--spacing needs three positive values"),
    (["--dims", "3", "--spacing", "1", "-2", "3"], "--spacing needs three positive values"),
    (["--dims", "2", "--spacing", "auto", "--size", "16", "16"], "--spacing is for 3D"),
    (["--dims", "3", "--kfold", "1"], "--kfold must be at least 2"),
    (["--dims", "3", "--kfold", "2", "--folds", "2"], "--kfold 2 has folds 0..1"),
    (["--dims", "3", "--width", "0"], "--width must be at least 1"),
    (["--dims", "3", "--iterations", "0"], "--iterations must be at least 1"),
    (["--dims", "3", "--augment", "twist"], "--augment: unknown kind twist"),
    (["--dims", "3", "--augment-prob", "1.5"], "--augment-prob must be between 0 and 1"),
    (["--dims", "3", "--channels", "PT", "CT", "--normalisation", "suv", "window", "zscore"], "--normalisation: give one kind"),
    (["--dims", "3", "--network", "swin-unetr", "--width", "10"], "--width: swin-unetr needs a width"),
    (["--dims", "3", "--channels", "PT", "MR"], "no row of modality MR"),
    (["--dims", "3", "--channels", "PT", "--folds", "1"], "no fold column"),
    (["--dims", "3", "--channels", "PT", "--kfold", "5"], "5 folds need at least 5 patients"),
])
def test_bad_options_are_one_line(tmp_path, capsys, argv, message):
    manifest = _dataset(tmp_path / "data", n=3, splits=("train", "val", "test"))
    code, cap = _run(["train", str(manifest), "--out", str(tmp_path / "b"), "--size", "32", "32", "32", "--width", "4", "--epochs", "1", *argv], capsys)
    assert code != 0 and message in cap.err, cap.err
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err


@pytest.mark.parametrize("folds, argv, message", [
    (["0", "1", ""], ["--kfold", "2"], "the fold column is blank for case 'p2_pt'"),
    (["0", "0", "0"], ["--folds", "0"], "fold 0 holds every case"),
    (["0", "1", "1"], ["--kfold", "2", "--folds", "0", "1", "--width", "0"], "--width must be at least 1"),
])
def test_bad_fold_columns_are_one_line(tmp_path, capsys, folds, argv, message):
    manifest = _dataset(tmp_path / "data", n=3, splits=("train", "val", "train"), with_ct=False, folds=folds)
    code, cap = _run(["train", str(manifest), "--out", str(tmp_path / "b"), "--dims", "3", "--size", "32", "32", "32",
                      "--width", "4", "--epochs", "1", *argv], capsys)
    assert code != 0 and message in cap.err, cap.err
    assert len(cap.err.strip().splitlines()) == 1
