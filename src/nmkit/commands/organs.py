"""`nmkit organs PET ORGANS OUT_CSV` (or a case table): organ uptake table, one row per patient x organ
(nmkit.petwb.organs); `nmkit organs ... --network` is in `nmkit network`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("organs", help="organ uptake per patient x organ: SUVmean, median, SUVpeak, CoV, volume",
                       description="Reads a PET (SUV) and a multi-organ label map (any segmenter; RTSTRUCT/SEG too), or a "
                                   "case table (nmkit-dataset/1 CSV) whose rows name the PET and its organ label map. Writes "
                                   "OUT (CSV; one row per patient x organ: volume_ml, suv_mean, suv_median, suv_sd, suv_cov, "
                                   "suv_max, suv_peak; SUV in g/ml) and <OUT>.provenance.json. --lesions removes lesion "
                                   "voxels from every organ (non-tumoural statistics). In a case table, the masks whose "
                                   "structure is lesion_<n> (as `nmkit delineate` and `nmkit wbphantom` write) are the "
                                   "lesions (excluded with --exclude-lesions), the other mask file is the organ map.")
    p.add_argument("input", help="PET (DICOM folder/file, or NIfTI in SUV with --assume-suv), or a case table CSV")
    p.add_argument("rois", nargs="?", help="organ label map / RTSTRUCT / SEG on the PET (not with a case table)")
    p.add_argument("out", help="output CSV")
    p.add_argument("--roi", action="append", metavar="SELECTOR", help="organs to measure (number, glob, name; default all)")
    p.add_argument("--lesions", metavar="FILE", help="lesion mask whose voxels are excluded from the organs")
    p.add_argument("--radiomics", metavar="PRESET", help="also IBSI features per organ (preset name, e.g. lifex-pet, or a "
                                                         "YAML config); columns ibsi_<feature>")
    p.add_argument("--exclude-lesions", action="store_true", help="case table: exclude each row's lesion_<n> masks")
    p.add_argument("--suv", choices=("bw", "lbm"), default="bw", help="SUV kind for DICOM PET")
    p.add_argument("--assume-suv", action="store_true", help="a NIfTI/NRRD PET's values are SUV")
    p.set_defaults(func=run)


def _one(pet_path, organ_path, args, case_id, lesion_path=None, extra: dict | None = None) -> list[dict]:
    from pathlib import Path

    from ..petwb.inputs import read_mask_on, read_suv_pet
    from ..petwb.organs import organ_table

    pet = read_suv_pet(pet_path, suv=args.suv, assume_suv=args.assume_suv)
    organs = read_mask_on(organ_path, pet, args.roi, "organ map")
    exclude = read_mask_on(lesion_path, pet, None, "lesion mask").binary(None) if lesion_path else None
    case = case_id or str(pet.meta.get("PatientID") or Path(pet_path).name.split(".")[0])
    rows = organ_table(pet, organs, exclude, radiomics=args.radiomics)
    return [{"patient_id": case, **(extra or {}), **r, "units": "SUV g/ml"} for r in rows]


def _row_files(row: dict, where) -> tuple[str, str | None]:
    """(organ map, lesion map or None) of a case-table row: masks named lesion_<n> are lesions."""
    from ..errors import InputError

    masks = list(row.get("masks") or [])
    lesion = sorted({m.file for m in masks if str(m.structure or "").lower().startswith("lesion")})
    organ = sorted({m.file for m in masks if m.file not in lesion})
    if len(organ) != 1 or len(lesion) > 1:
        raise InputError(where, f"case {row.get('case_id')!r}: needs one organ map (has {len(organ)}) and at most one "
                                f"lesion map (has {len(lesion)})")
    return organ[0], (lesion[0] if lesion else None)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance

    out = Path(args.out)
    if out.is_dir():
        raise InputError(out, "is a folder; give the output CSV file")
    src = Path(args.input)
    rows: list[dict] = []
    if src.is_file() and src.suffix.lower() == ".csv":
        from ..dataset import is_blank, read_dataset

        if args.rois:
            raise InputError(args.rois, "give the organ maps in the case table, not as an argument")
        table = read_dataset(src, need_masks=True)
        for row in table.to_dict(orient="records"):
            organ_file, lesion_file = _row_files(row, src)
            patient = row["case_id"] if is_blank(row.get("patient_id")) else row["patient_id"]
            extra = {"case_id": row["case_id"], "time_point": row.get("time_point")}
            rows += _one(row["image"], organ_file, args, str(patient),
                         args.lesions or (lesion_file if args.exclude_lesions else None), extra)
    else:
        if not args.rois:
            raise InputError(src, "give the organ label map after the PET (or a case table CSV as the only input)")
        rows = _one(args.input, args.rois, args, None, args.lesions)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    out.with_name(out.stem + ".provenance.json").write_text(json.dumps(
        provenance({k: v for k, v in vars(args).items() if k != "func"}, [str(args.input)]), indent=1, default=str))
    print(f"{len(rows)} organ rows -> {out}")
    return 0
