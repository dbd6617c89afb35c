"""PET numbers from `nmkit radiomics` on real scans: native-grid SUVmax/mean/peak, MTV, TLG, units, ROI selection.

pet_sts: 3 FDG PET (DICOM, stored as SUV: Units GML) with an RTSTRUCT GTV; spect_lu177: a Lu-177 SPECT stored as PT
(Bq/ml) with two liver lesions, indexed in the same catalog so that an FDG run must leave it out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import need

FAST = "base: lifex-pet\nname: pet-fast\nfamilies: [morphology, intensity_statistics]\n"


@pytest.fixture(scope="module")
def catalog(external_data, tmp_path_factory):
    from nmkit.catalog.index import index_folder

    sts = need(external_data, "pet_sts/sts_images")
    lu = need(external_data, "spect_lu177")
    tmp = tmp_path_factory.mktemp("petcli")
    db = tmp / "catalog.sqlite"
    index_folder(sts, db)
    index_folder(lu, db)
    config = tmp / "fast.yaml"
    config.write_text(FAST)
    return {"db": db, "sts": sts, "lu": lu, "config": config, "tmp": tmp}


def _raw_suv_and_roi(series: Path):
    """SUV straight from the pydicom tags (rescale, units, weight, dose, half-life, times), the GTV mask and the voxel
    volume (ml) from PixelSpacing and the slice positions, all ordered like nmkit's image."""
    import pydicom

    from nmkit.io.reader import read_image
    from nmkit.io.roi import load_rois

    image = read_image(series / "image")  # stored values; only its grid and slice order are used
    rt = next((series / "mask").glob("*.dcm"))
    roi = load_rois(rt, image).binary()
    slices = {}
    for f in (series / "image").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        slices[str(ds.SOPInstanceUID)] = ds
    ordered = [slices[uid] for uid in image.meta["SOPInstanceUIDs"]]
    values = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered])
    first = ordered[0]
    units = str(first.Units).upper()
    if units == "GML":  # already SUVbw
        suv = values
    else:
        assert units == "BQML"
        info = first.RadiopharmaceuticalInformationSequence[0]

        def seconds(tm: str) -> float:
            return int(tm[:2]) * 3600 + int(tm[2:4]) * 60 + float(tm[4:])

        dose = float(info.RadionuclideTotalDose)
        if str(first.DecayCorrection).upper() == "START":
            elapsed = seconds(str(first.SeriesTime)) - seconds(str(info.RadiopharmaceuticalStartTime))
            dose *= 2.0 ** (-elapsed / float(info.RadionuclideHalfLife))
        suv = values * float(first.PatientWeight) * 1000.0 / dose
    z = [float(np.dot(ds.ImagePositionPatient, np.cross(ds.ImageOrientationPatient[:3], ds.ImageOrientationPatient[3:])))
         for ds in ordered]
    voxel_ml = float(first.PixelSpacing[0]) * float(first.PixelSpacing[1]) * float(np.median(np.abs(np.diff(z)))) / 1000.0
    return suv, roi, voxel_ml


@pytest.fixture(scope="module")
def fdg_run(catalog):
    import pandas as pd

    from nmkit.cli import main

    out = catalog["tmp"] / "fdg.csv"
    rc = main(["radiomics", "--catalog", str(catalog["db"]), "--modality", "PT", "--tracer", "FDG", "--roi", "GTV*",
               "--suv", "bw", "--config", str(catalog["config"]), "--per-patient", "--no-progress", "--out", str(out)])
    assert rc == 0
    return {"table": pd.read_csv(out, dtype={"patient_id": str}), "out": out,
            "units": json.loads(Path(str(out) + ".units.json").read_text()),
            "patients": pd.read_csv(catalog["tmp"] / "fdg.patients.csv", dtype={"patient_id": str})}


def test_fdg_suv_max_equals_raw_dicom_and_lu177_left_out(fdg_run, catalog):
    t = fdg_run["table"]
    assert list(t.patient_id) == ["STS_001", "STS_002", "STS_003"]  # no Lu-177 SPECT (stored as PT) in an FDG run
    assert t.tracer.str.contains("FDG").all() and set(t.structure) == {"GTV_Mass_PET"}
    assert list(t.segment_number) == [1, 1, 1] and set(t.mask_kind) == {"rtstruct"} and set(t.image_units) == {"g/ml"}
    for row in t.itertuples():
        suv, roi, voxel_ml = _raw_suv_and_roi(catalog["sts"] / row.patient_id / "PET" / "dicom")
        assert row.native_suv_max == pytest.approx(float(suv[roi].max()), rel=0.005)
        assert row.native_suv_mean == pytest.approx(float(suv[roi].mean()), rel=0.005)
        assert row.native_suv_mean <= row.native_suv_peak <= row.native_suv_max
        assert row.native_voxels == int(roi.sum())
        assert row.mtv_ml == pytest.approx(row.native_voxels * voxel_ml, rel=1e-4)
        assert row.tlg_g == pytest.approx(row.native_suv_mean * row.mtv_ml, rel=1e-9)
        assert row.stat_max < row.native_suv_max  # IBSI statistics stay on the 2 mm interpolated grid
        assert row.morph_volume_ml == pytest.approx(row.morph_volume / 1000.0)
    # the raw-DICOM SUVmax values (the resampled stat_max read 7.20 / 20.49 / 9.99)
    np.testing.assert_allclose(t.native_suv_max, [7.91, 21.68, 10.27], atol=0.01)


def test_units_and_per_patient_summary(fdg_run):
    from nmkit.commands.radiomics import feature_columns

    units = fdg_run["units"]["columns"]
    t = fdg_run["table"]
    assert units["native_suv_max"] == "g/ml (SUVbw)" and units["mtv_ml"] == "ml" and units["tlg_g"] == "g"
    assert units["morph_volume"] == "mm^3" and units["morph_volume_ml"] == "ml" and units["stat_max"] == "g/ml"
    assert units["stat_var"] == "(g/ml)^2" and units["morph_sphericity"] == "1"
    assert set(feature_columns(t, ["patient_id", "image"])) <= set(units)  # every numeric output has its unit
    p = fdg_run["patients"].set_index("patient_id")
    assert list(p.lesion_count) == [1, 1, 1]
    by_patient = t.set_index("patient_id")
    for col, src in (("patient_suv_max", "native_suv_max"), ("total_mtv_ml", "mtv_ml"), ("total_tlg_g", "tlg_g")):
        np.testing.assert_allclose(p[col], by_patient.loc[p.index, src])


def test_pet_native_preset_agrees_with_ibsi_features_on_the_native_grid(catalog, fdg_run, tmp_path, capsys):
    """Without resampling the IBSI features are on the PET grid: stat_max = SUVmax, the IBSI global intensity peak =
    SUVpeak (two implementations), voxel-counting volume = MTV; --diagnostics adds the IBSI diagnostics."""
    import pandas as pd

    from nmkit.cli import main

    out = tmp_path / "native.csv"
    assert main(["radiomics", "--catalog", str(catalog["db"]), "--tracer", "FDG", "--roi", "1", "--suv", "bw",
                 "--preset", "pet-native", "--diagnostics", "--no-progress", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    np.testing.assert_allclose(t.stat_max, t.native_suv_max, rtol=1e-6)
    np.testing.assert_allclose(t.loc_peak_glob, t.native_suv_peak, rtol=1e-6)
    np.testing.assert_allclose(t.morph_vol_approx_ml, t.mtv_ml, rtol=1e-9)
    np.testing.assert_allclose(t.native_suv_max, fdg_run["table"].native_suv_max, rtol=1e-9)  # same as lifex-pet
    assert list(t.int_mask_vox_count_init_roi) == list(t.native_voxels) and set(t.segment_number) == {1}
    units = json.loads(Path(str(out) + ".units.json").read_text())["columns"]
    assert units["int_mask_vox_count_init_roi"] == "voxels" and units["vox_dim_x_init_img"] == "mm"
    assert main(["radiomics", "--catalog", str(catalog["db"]), "--preset", "ibsi-c", "--per-patient",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "--per-patient needs the native PET numbers" in capsys.readouterr().err


def test_roi_name_that_matches_nothing_lists_the_structures(catalog, tmp_path, capsys):
    from nmkit.cli import main

    rc = main(["radiomics", "--catalog", str(catalog["db"]), "--tracer", "FDG", "--roi", "GTV", "--no-progress",
               "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "'GTV'" in err and "GTV_Mass_PET" in err and "GTV*" in err and len(err.strip().splitlines()) == 1
    assert main(["radiomics", "--manifest", str(tmp_path / "none.csv"), "--tracer", "FDG", "--out", str(tmp_path / "y.csv")]) == 2
    assert "--tracer filters a catalog" in capsys.readouterr().err


@pytest.mark.slow
def test_lu177_spect_lesions_by_number_and_glob(catalog, tmp_path):
    import pandas as pd

    from nmkit.cli import main

    out = tmp_path / "lu.csv"
    assert main(["radiomics", "--catalog", str(catalog["db"]), "--tracer", "Lu-177", "--series-description", "*xSPECT*",
                 "--roi", "2", "--config", str(catalog["config"]), "--no-progress", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert len(t) == 2 and set(t.segment_number) == {2} and set(t.structure) == {"lesion2 liver L lateral"}
    assert set(t.image_units) == {"Bq/ml"} and "native_max" in t and "tla" in t and "native_suv_max" not in t
    units = json.loads(Path(str(out) + ".units.json").read_text())["columns"]
    assert units["native_max"] == "Bq/ml" and units["tla"] == "Bq/ml x ml"
    both = tmp_path / "both.csv"
    assert main(["radiomics", "--catalog", str(catalog["db"]), "--tracer", "Lu177", "--roi", "lesion*",
                 "--config", str(catalog["config"]), "--no-progress", "--out", str(both)]) == 0
    b = pd.read_csv(both)
    assert sorted(zip(b.segment_number, b.structure)) == [(1, "lesion1 liver R lobe")] * 2 + [(2, "lesion2 liver L lateral")] * 2


def test_seg_with_repeated_labels_selected_by_number(catalog, tmp_path):
    """A QIN-style SEG (segments 2 and 3 share the label): --roi 3 extracts segment 3 only, a name selects both."""
    import pandas as pd
    from scipy import ndimage

    from nmkit.cli import main
    from nmkit.io.image import Mask
    from nmkit.io.reader import read_image
    from nmkit.io.roi import load_rois
    from nmkit.io.seg import write_seg

    series = catalog["sts"] / "STS_002" / "PET" / "dicom"
    image = read_image(series / "image")
    gtv = load_rois(next((series / "mask").glob("*.dcm")), image).binary()
    z = np.nonzero(gtv.any(axis=(1, 2)))[0]
    lower = gtv.copy()
    lower[z[len(z) // 2]:] = False
    upper = gtv & ~lower
    core = ndimage.binary_erosion(gtv, iterations=1)
    layers = np.stack([core, lower, upper])
    seg = tmp_path / "seg.dcm"
    write_seg(Mask.like(image, layers, labels={1: "Neoplasm, Primary", 2: "Neoplasm, Secondary", 3: "Neoplasm, Secondary"},
                        overlapping=True), image, seg)
    out = tmp_path / "seg.csv"
    assert main(["radiomics", "--image", str(series / "image"), "--mask", str(seg), "--roi", "3", "--suv", "bw",
                 "--config", str(catalog["config"]), "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert list(t.segment_number) == [3] and list(t.label_value) == [3] and list(t.mask_kind) == ["seg"]
    assert t.native_voxels[0] == int(upper.sum()) != int(lower.sum())
    out2 = tmp_path / "seg2.csv"
    assert main(["radiomics", "--image", str(series / "image"), "--mask", str(seg), "--roi", "neoplasm, secondary",
                 "--suv", "bw", "--config", str(catalog["config"]), "--format", "long", "--out", str(out2)]) == 0
    long = pd.read_csv(out2)
    voxels = long[long.feature == "native_voxels"].set_index("segment_number")["value"]
    assert dict(voxels) == {2: lower.sum(), 3: upper.sum()}
    assert set(long[long.feature == "mtv_ml"].unit) == {"ml"} and set(long[long.feature == "native_suv_max"].unit) == {"g/ml (SUVbw)"}


def test_diagnostics_match_ibsi_reference_config_c(external_data):
    """--diagnostics: the IBSI diagnostic features of the CT phantom (config C) within the reference tolerances."""
    import pandas as pd

    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.engine import extract
    from nmkit.radiomics.presets import load_config

    root = need(external_data, "ibsi/ibsi_1_ct_radiomics_phantom/nifti")
    ref = pd.read_csv(need(external_data, "ibsi/ibsi1_reference.csv"))
    ref = ref[(ref.iloc[:, 0] == "config_C") & (ref.iloc[:, 1] == "diagnostics")]
    cfg = load_config("ibsi-c")
    cfg.families = ("intensity_statistics",)
    got = extract(read_volume(root / "image" / "phantom.nii.gz"), read_label_map(root / "mask" / "mask.nii.gz"), cfg,
                  diagnostics=True)
    tag_col, value_col, tol_col = ref.columns[2], ref.columns[4], ref.columns[5]
    bad = []
    for tag, value, tol in zip(ref[tag_col], ref[value_col], ref[tol_col]):
        x = got[tag]
        close = [abs(v - float(value)) <= float(tol) + 1e-9 for v in (x, float(f"{x:.3g}"))]  # IBSI: 3 significant digits
        if not any(close):
            bad.append(f"{tag}: {x} vs {value} +- {tol}")
    assert len(ref) >= 60 and not bad, bad


def test_roi2mask_case_table_to_radiomics_by_segment_number(catalog, fdg_run, tmp_path):
    """roi2mask (SUV NIfTI + one mask per segment + dataset.csv) -> radiomics --manifest: a QIN-style SEG whose
    segments 2 and 3 share a label keeps them apart by number, with the DICOM run's SUV numbers."""
    import pandas as pd

    from nmkit.cli import main
    from nmkit.dataset import MaskRef, new_table, write_dataset
    from nmkit.io.image import Mask
    from nmkit.io.reader import read_image
    from nmkit.io.roi import load_rois
    from nmkit.io.seg import write_seg

    series = catalog["sts"] / "STS_002" / "PET" / "dicom"
    image = read_image(series / "image")
    gtv = load_rois(next((series / "mask").glob("*.dcm")), image).binary()
    z = np.nonzero(gtv.any(axis=(1, 2)))[0]
    lower = gtv.copy()
    lower[z[len(z) // 2]:] = False
    seg = tmp_path / "seg.dcm"
    write_seg(Mask.like(image, np.stack([gtv, lower, gtv & ~lower]),
                        labels={1: "Neoplasm, Primary", 2: "Neoplasm, Secondary", 3: "Neoplasm, Secondary"}, overlapping=True),
              image, seg)
    cases = tmp_path / "cases.csv"
    write_dataset(new_table([{"patient_id": "STS_002", "image": str(series / "image"),
                              "masks": [MaskRef(file=str(seg), kind="seg")]}]), cases, {"producer": "test"})
    converted = tmp_path / "masks"
    assert main(["roi2mask", str(cases), str(converted), "--suv", "bw"]) == 0
    out = tmp_path / "r.csv"
    assert main(["radiomics", "--manifest", str(converted / "dataset.csv"), "--roi", "3", "--preset", "pet-native",
                 "--no-progress", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert list(t.segment_number) == [3] and list(t.mask_kind) == ["labelmap"] and list(t.image_units) == ["g/ml"]
    assert t.native_voxels[0] == int((gtv & ~lower).sum())
    every = tmp_path / "all.csv"
    assert main(["radiomics", "--manifest", str(converted / "dataset.csv"), "--preset", "pet-native", "--no-progress",
                 "--out", str(every)]) == 0
    a = pd.read_csv(every).set_index("segment_number")
    assert sorted(a.index) == [1, 2, 3] and list(a.loc[[2, 3], "structure"]) == ["Neoplasm, Secondary"] * 2
    dicom = fdg_run["table"].set_index("patient_id").loc["STS_002"]
    assert a.loc[1, "native_suv_max"] == pytest.approx(dicom.native_suv_max, rel=1e-5)  # NIfTI in SUV = DICOM in SUV
    assert a.loc[1, "mtv_ml"] == pytest.approx(dicom.mtv_ml, rel=1e-6)
