"""SNOMED-CT codes and model identity in predicted DICOM SEGs (issue 23).

What is checked: the shipped TotalSegmentator table covers all 117 class names of its v2 ``total`` task and most of its
codes equal pydicom's DICOM code dictionary (an independent source); a SEG written for "liver",
"lung_upper_lobe_left", "kidney_cyst_right" and an unknown name carries the right category/type/modifier/region codes
(read back with pydicom and highdicom); ``nmkit predict --seg`` on a DICOM CT series puts the model's name, version,
weights digest (equal to hashlib's over the bundle files) and sliding-window settings into the SEG's
AlgorithmIdentificationSequence.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pydicom

from nmkit.cli import main
from nmkit.io.snomed import segment_codes, table_path

TOTAL_V2 = ("spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left "
            "lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right "
            "esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left "
            "kidney_cyst_right sacrum vertebrae_S1 " + " ".join(f"vertebrae_L{i}" for i in range(1, 6)) + " "
            + " ".join(f"vertebrae_T{i}" for i in range(1, 13)) + " " + " ".join(f"vertebrae_C{i}" for i in range(1, 8)) +
            " heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right subclavian_artery_left "
            "common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left brachiocephalic_vein_right "
            "atrial_appendage_left superior_vena_cava inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left "
            "iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right scapula_left scapula_right "
            "clavicula_left clavicula_right femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left "
            "gluteus_maximus_right gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right "
            "autochthon_left autochthon_right iliopsoas_left iliopsoas_right brain skull "
            + " ".join(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)) + " sternum costal_cartilages").split()


def test_totalsegmentator_table_covers_the_117_classes_and_agrees_with_pydicom():
    from pydicom.sr.codedict import codes

    assert len(set(TOTAL_V2)) == 117
    assert all(not segment_codes(name).generic for name in TOTAL_V2)
    rows = list(csv.DictReader(open(table_path("totalsegmentator"), encoding="utf-8")))
    compared = agree = 0
    for row in rows:
        keyword = "".join(w.capitalize() for w in re.split(r"[ _]", row["meaning"]))
        try:
            code = getattr(codes.SCT, keyword)
        except AttributeError:
            continue
        compared += 1
        agree += code.value == row["code"]
    # radius, carpus and fat differ on purpose: pydicom's keyword means the length / the wrist / fat as a substance
    assert compared >= 100 and compared - agree <= 3


def _ct_series(folder: Path):
    from test_io_rtstruct import synthetic_ct_series

    files, sphere = synthetic_ct_series(folder)
    return files, sphere


def test_seg_codes_for_known_and_unknown_names(tmp_path):
    import highdicom as hd

    from nmkit.io.dicom_series import stack_slices
    from nmkit.io.image import Mask
    from nmkit.io.seg import write_seg

    files, _ = _ct_series(tmp_path / "ct")
    image, _ = stack_slices(files)
    labels = np.zeros(image.spatial_shape, dtype=np.uint8)
    labels[2:5, 5:15, 5:15], labels[6:9, 20:30, 5:15], labels[2:5, 20:30, 25:35], labels[8:10, 5:15, 30:40] = 1, 2, 3, 4
    names = {1: "liver", 2: "lung_upper_lobe_left", 3: "kidney_cyst_right", 4: "my odd blob"}
    mask = Mask.like(image, labels, labels=names)
    path = write_seg(mask, image, tmp_path / "seg.dcm", algorithm_name="test-net", algorithm_version="1.2.3",
                     algorithm_source="nmkit nmkit", algorithm_parameters={"model_sha256": "ab" * 32})
    ds = pydicom.dcmread(str(path))
    items = {int(s.SegmentNumber): s for s in ds.SegmentSequence}

    def code(seq):
        return (seq[0].CodingSchemeDesignator, seq[0].CodeValue, seq[0].CodeMeaning)

    liver, lobe, cyst, blob = items[1], items[2], items[3], items[4]
    assert liver.SegmentLabel == "liver" and code(liver.SegmentedPropertyTypeCodeSequence) == ("SCT", "10200004", "Liver")
    assert code(liver.SegmentedPropertyCategoryCodeSequence) == ("SCT", "91723000", "Anatomical Structure")
    assert code(lobe.SegmentedPropertyTypeCodeSequence)[1] == "45653009"
    assert code(lobe.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence) == ("SCT", "7771000", "Left")
    assert code(cyst.SegmentedPropertyCategoryCodeSequence)[1] == "49755003"  # Morphologically Abnormal Structure
    assert code(cyst.SegmentedPropertyTypeCodeSequence)[1] == "367643001"
    assert code(cyst.AnatomicRegionSequence)[1] == "64033007"  # kidney
    assert code(cyst.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence)[1] == "24028007"
    assert blob.SegmentLabel == "my odd blob"
    assert code(blob.SegmentedPropertyTypeCodeSequence) == ("SCT", "85756007", "Tissue")
    assert code(blob.SegmentedPropertyCategoryCodeSequence) == ("SCT", "85756007", "Tissue")
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion, algorithm.AlgorithmSource) == ("test-net", "1.2.3", "nmkit nmkit")
    assert "model_sha256=" + "ab" * 32 in str(algorithm.AlgorithmParameters)
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert seg.get_segment_description(1).segmented_property_type.value == "10200004"


def test_predict_seg_carries_model_identity(tmp_path):
    from test_predict_window import _blob_bundle

    files, _ = _ct_series(tmp_path / "ct")
    bundle = _blob_bundle(tmp_path / "bundle")
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(tmp_path / "ct"), "--out", str(out), "--seg", "--device", "cpu", "--no-tta",
                 "--overlap", "0.5", "--sw-batch", "3"]) == 0
    (seg_file,) = sorted(out.glob("*_seg.dcm"))
    ds = pydicom.dcmread(str(seg_file))
    checksums = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in ("bundle.json", "model.safetensors")}
    digest = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    record = json.loads((out / "provenance.json").read_text())
    assert record["model"]["identity"]["model_sha256"] == digest
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "blob-liver" and algorithm.AlgorithmVersion == f"0.0.2 sha256:{digest[:8]}"
    params = dict(p.split("=", 1) for p in str(algorithm.AlgorithmParameters).split(","))
    assert params["model_sha256"] == digest and params["sw_overlap"] == "0.5" and params["sw_batch"] == "3"
    assert params["engine"] == "nmkit" and params["tta"] == "none"
    assert ds.SeriesDescription == "blob-liver 0.0.2" and ds.SegmentSequence[0].SegmentLabel == "liver"
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"


def test_totalsegmentator_output_on_real_ct_gets_its_codes(external_data, tmp_path):
    """TotalSegmentator's own output for its example CT (20 DICOM slices, 31 classes present; names in class order
    from its statistics.json): every segment of the SEG is coded from the table, none generic; liver/left upper lobe/
    T-vertebra codes as the table says."""
    from conftest import need

    from nmkit.io.dicom_series import stack_slices
    from nmkit.io.image import Mask
    from nmkit.io.seg import write_seg
    from nmkit.io.volume_files import read_volume

    ref = need(external_data, "ct_totalsegmentator/tests/reference_files")
    names = list(json.loads((ref / "example_seg_fast" / "statistics.json").read_text()))
    assert len(names) == 117 and names[4] == "liver"
    labels = read_volume(ref / "example_seg_dicom.nii.gz").array
    image, sources = stack_slices(sorted((ref / "example_ct_dicom").iterdir()))
    for source in sources:  # the anonymised example slices carry an empty SOPClassUID, which a SEG must reference
        source.SOPClassUID = source.SOPClassUID or pydicom.uid.CTImageStorage
    present = [int(v) for v in np.unique(labels) if v]
    mask = Mask.like(image, labels.astype(np.uint8), labels={v: names[v - 1] for v in present})
    ds = pydicom.dcmread(str(write_seg(mask, sources, tmp_path / "ts.dcm", algorithm_name="TotalSegmentator")))
    coded = {str(s.SegmentLabel): s for s in ds.SegmentSequence}
    assert len(coded) == len(present) >= 30
    generic = [n for n, s in coded.items() if s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"]
    assert generic == []
    assert coded["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    for name, item in coded.items():
        side = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
        if name.endswith("_left") or "_left_" in name:
            assert side is not None and side[0].CodeValue == "7771000", name
        if name.endswith("_right") or "_right_" in name:
            assert side is not None and side[0].CodeValue == "24028007", name
