"""Segmentation data reads case tables only through ``nmkit.dataset.read_dataset``: legacy manifests, contract tables,
rows without masks, missing files and the manifest readers of ``generate`` and ``serve`` that build on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nmkit.dataset import MaskRef, new_table, write_dataset
from nmkit.errors import InputError
from nmkit.io.image import Image, Mask
from nmkit.io.volume_files import write_volume
from nmkit.segment.data import load_split, read_manifest


def _scan(rng: np.random.Generator, n: int = 32) -> tuple[Image, Mask]:
    """A planar count image (Poisson, 2 mm pixels) with a hot disc, and the disc's label map."""
    yy, xx = np.mgrid[:n, :n]
    disc = ((yy - n / 2 + rng.uniform(-3, 3)) ** 2 + (xx - n / 2 + rng.uniform(-3, 3)) ** 2) <= (n / 5) ** 2
    image = Image(array=rng.poisson(5 + 95 * disc).astype(np.float32), spacing=(2.0, 2.0), modality="NM")
    return image, Mask.like(image, disc.astype(np.uint8), labels={1: "gtv"})


@pytest.fixture()
def scans(tmp_path):
    rng = np.random.default_rng(3)
    files = []
    for i in range(4):
        image, mask = _scan(rng)
        files.append((write_volume(image, tmp_path / f"img{i}.nii.gz"), write_volume(mask, tmp_path / f"img{i}_gtv.nii.gz"),
                      mask.array))
    return files


def test_legacy_manifest_and_contract_table_give_the_same_cases(tmp_path, scans):
    legacy = tmp_path / "legacy.csv"
    pd.DataFrame({"image": [f.name for f, _, _ in scans], "mask": [m.name for _, m, _ in scans],
                  "split": ["train", "train", "val", "test"]}).to_csv(legacy, index=False)
    table = new_table([{"case_id": f"c{i}", "patient_id": f"P{i}", "image": str(f), "split": s,
                        "masks": [MaskRef(file=str(m), structure="gtv", label=1)]}
                       for i, ((f, m, _), s) in enumerate(zip(scans, ["train", "train", "val", "test"]))])
    write_dataset(table, tmp_path / "dataset.csv")
    for path in (legacy, tmp_path / "dataset.csv"):
        cases = load_split(read_manifest(path), "train")
        assert len(cases) == 2 and cases[0].image.spacing == (2.0, 2.0)
        assert np.array_equal(cases[0].label, scans[0][2]) and np.array_equal(cases[1].label, scans[1][2])
    assert [c.case_id for c in load_split(read_manifest(tmp_path / "dataset.csv"), "val")] == ["c2"]


def test_bad_rows_are_named(tmp_path, scans):
    path = tmp_path / "m.csv"
    pd.DataFrame({"image": [f.name for f, _, _ in scans], "mask": [scans[0][1].name, "", scans[2][1].name, ""],
                  "split": ["train", "train", "val", "test"]}).to_csv(path, index=False)
    table = read_manifest(path)
    with pytest.raises(InputError, match=r"row 3, column 'masks'.*has no mask"):  # training on an empty label: refused
        load_split(table, "train")
    assert load_split(table, "test", need_masks=False)[0].label.sum() == 0
    pd.DataFrame({"image": ["img0.nii.gz", "gone.nii.gz"], "mask": [scans[0][1].name] * 2, "split": ["train"] * 2}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"row 3, column 'image': file .*gone.nii.gz does not exist"):
        read_manifest(path)
    pd.DataFrame({"image": ["img0.nii.gz"], "mask": [scans[0][1].name]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['split'\]"):
        read_manifest(path)
    assert len(read_manifest(path, require=("image",))) == 1  # no split needed: every row


def test_generate_load_manifest_reads_the_case_table(tmp_path, scans):
    from nmkit.generate.data import load_manifest

    table = new_table([{"case_id": f"c{i}", "patient_id": f"P{i}", "image": str(f), "split": "train",
                        "masks": [MaskRef(file=str(m))] if i % 2 == 0 else []} for i, (f, m, _) in enumerate(scans)])
    write_dataset(table, tmp_path / "dataset.csv")
    images = load_manifest(tmp_path / "dataset.csv", split=None)
    assert [t.name for t in images] == ["c0", "c1", "c2", "c3"]
    assert np.array_equal(images[0].label, scans[0][2]) and images[1].label is None  # a row without a mask: image only
    assert len(load_manifest(tmp_path / "dataset.csv", split="train", limit=2)) == 2
