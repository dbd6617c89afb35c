"""`nmkit burden PET LESIONS OUT_DIR` (or a case table): tumour burden per patient (TMTV, TLG, lesion count, SUVmax,
SUVpeak, Dmax, SDmax) and a per-lesion table (nmkit.petwb.burden)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("burden", help="tumour burden per patient: TMTV, total TLG, lesion count, SUVmax/peak, Dmax, SDmax",
                       description="Reads a PET (SUV) and a lesion label map (one label per lesion, e.g. from `nmkit "
                                   "delineate`), or a case table (nmkit-dataset/1 CSV, e.g. delineate's dataset.csv) whose "
                                   "rows name the PET and its lesion label map. Writes OUT_DIR/burden_patients.csv (tmtv_ml, "
                                   "tlg_total_g, lesion_count, suv_max, suv_peak, dmax_mm, bsa_m2, sdmax_per_m), "
                                   "OUT_DIR/burden_lesions.csv (volume_ml, suv_max/mean/peak, tlg_g, centroid_*_mm), "
                                   "burden.provenance.json and, for DICOM PET, <case>_burden_sr.dcm (DICOM SR, TID 1500 "
                                   "measurement report). SDmax = Dmax (m) / body surface area (m^2).")
    p.add_argument("input", help="PET (DICOM folder/file, or NIfTI in SUV with --assume-suv), or a case table CSV")
    p.add_argument("lesions", nargs="?", help="lesion label map / RTSTRUCT / SEG on the PET (not with a case table)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--components", action="store_true", help="split the lesion mask into connected components (one "
                                                              "lesion each) instead of one lesion per label")
    p.add_argument("--suv", choices=("bw", "lbm"), default="bw", help="SUV kind for DICOM PET")
    p.add_argument("--assume-suv", action="store_true", help="a NIfTI/NRRD PET's values are SUV")
    p.add_argument("--weight-kg", type=float, help="patient weight (default: DICOM PatientWeight)")
    p.add_argument("--height-m", type=float, help="patient height in metres (default: DICOM PatientSize)")
    p.add_argument("--bsa", choices=("mosteller", "dubois"), default="mosteller", help="body surface area formula")
    p.add_argument("--no-sr", action="store_true", help="do not write the DICOM SR (TID 1500) for DICOM PET inputs")
    p.set_defaults(func=run)


def _one(pet_path: str, lesion_path: str, args, case_id: str | None, selector=None) -> tuple[dict, list[dict]]:
    from pathlib import Path

    from ..io.filenames import safe_name
    from ..petwb.burden import patient_burden, split_components
    from ..petwb.inputs import is_dicom_input, read_mask_on, read_suv_pet

    pet = read_suv_pet(pet_path, suv=args.suv, assume_suv=args.assume_suv)
    lesions = read_mask_on(lesion_path, pet, selector, "lesion map")
    if args.components:
        lesions = split_components(lesions)
    patient, rows = patient_burden(pet, lesions, args.weight_kg, args.height_m, args.bsa)
    case = case_id or str(pet.meta.get("PatientID") or Path(pet_path).name.split(".")[0])
    if is_dicom_input(pet) and not args.no_sr:
        _write_sr(patient, rows, pet, Path(args.out_dir) / f"{safe_name(case, 'case')}_burden_sr.dcm", args)
    return {"case_id": case, **patient}, [{"case_id": case, **r} for r in rows]


def _write_sr(patient: dict, rows: list[dict], pet, path, args) -> None:
    import logging

    from ..io.dicom_warnings import DicomWarnings
    from ..petwb.sr import write_burden_sr

    collector = DicomWarnings()
    with collector.capture(path):
        write_burden_sr(patient, rows, pet.meta["source_files"], path, suv_kind=args.suv)
    if getattr(args, "verbose", 0):  # warnings about tags copied from the source series: details only with -v
        collector.report(logging.getLogger("nmkit.burden"), verbose=True)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    src = Path(args.input)
    patients, lesions = [], []
    if src.is_file() and src.suffix.lower() == ".csv":
        from ..dataset import read_dataset

        if args.lesions:
            raise InputError(args.lesions, "give the lesion maps in the case table's masks, not as an argument")
        table = read_dataset(src, need_masks=True)
        for row in table.to_dict(orient="records"):
            files = sorted({m.file for m in row["masks"] if m.kind in ("labelmap", "rtstruct", "seg")})
            if len(files) != 1:
                raise InputError(src, f"case {row['case_id']}: {len(files)} lesion files; burden needs exactly one per row")
            selector = [str(m.segment) for m in row["masks"] if m.segment is not None] or None
            p, r = _one(row["image"], files[0], args, str(row["case_id"]), selector)
            patients.append(p)
            lesions += r
    else:
        if not args.lesions:
            raise InputError(src, "give the lesion label map after the PET (or a case table CSV as the only input)")
        p, r = _one(args.input, args.lesions, args, None)
        patients.append(p)
        lesions += r
    out.mkdir(parents=True, exist_ok=True)
    # the unit column, as delineate's lesions.csv and organs' table carry it (SUV in g/ml)
    patients = [{**p, "units": "volume ml, TLG g, SUV g/ml, Dmax mm, BSA m^2, SDmax 1/m"} for p in patients]
    lesions = [{**r, "units": "volume ml, TLG g, SUV g/ml, centroid mm"} for r in lesions]
    pd.DataFrame(patients).to_csv(out / "burden_patients.csv", index=False)
    pd.DataFrame(lesions).to_csv(out / "burden_lesions.csv", index=False)
    (out / "burden.provenance.json").write_text(json.dumps(provenance({k: v for k, v in vars(args).items() if k != "func"},
                                                                      [str(args.input)]), indent=1, default=str))
    for p in patients:
        print(f"{p['case_id']:<24} {p['lesion_count']:>3} lesions  TMTV {p['tmtv_ml']:9.2f} ml  TLG {p['tlg_total_g']:9.1f} g  "
              f"SUVmax {p['suv_max']:6.2f} g/ml  Dmax {p['dmax_mm']:7.1f} mm  SDmax {p['sdmax_per_m']:.3f} m^-1")
    return 0
