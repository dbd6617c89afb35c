"""`nmkit percist BASELINE FOLLOWUP OUT_DIR`: PERCIST 1.0 response between two PET scans (hottest lesion SULpeak,
30 % and 0.8-unit rules, liver stability) and a Deauville-type score per follow-up lesion (nmkit.petwb.reference)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("percist", help="PERCIST 1.0 response (SULpeak change, liver reference) and Deauville-type scores",
                       description="Reads the two PET scans in SUL (DICOM, --suv lbm by default; NIfTI with --assume-suv), "
                                   "their lesion label maps and reference regions: the liver 3 cm sphere (placed in the "
                                   "right lobe of the liver structure of --*-organs, or at --*-liver-centre) and the "
                                   "mediastinal blood pool 1 cm sphere (aorta structure, or --*-blood-pool-centre). Writes "
                                   "OUT_DIR/percist.csv (one row: SULpeak baseline/follow-up, change in units and %, liver "
                                   "means and thresholds, liver_stable, new_lesion, category CMR/PMR/SMD/PMD), "
                                   "references.csv and deauville.csv (one row per follow-up lesion).")
    p.add_argument("baseline", help="baseline PET (DICOM folder/file or NIfTI)")
    p.add_argument("followup", help="follow-up PET (DICOM folder/file or NIfTI)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--baseline-lesions", required=True, metavar="FILE", help="baseline lesion label map / RTSTRUCT / SEG")
    p.add_argument("--followup-lesions", required=True, metavar="FILE", help="follow-up lesion label map / RTSTRUCT / SEG")
    p.add_argument("--baseline-organs", metavar="FILE", help="baseline organ label map with liver (and aorta)")
    p.add_argument("--followup-organs", metavar="FILE", help="follow-up organ label map with liver (and aorta)")
    p.add_argument("--liver-roi", default="liver", metavar="SELECTOR", help="liver structure of the organ maps (default liver)")
    p.add_argument("--blood-pool-roi", default="aorta", metavar="SELECTOR", help="blood-pool structure (default aorta)")
    for tp in ("baseline", "followup"):
        p.add_argument(f"--{tp}-liver-centre", metavar="X,Y,Z", help=f"{tp} liver sphere centre (mm, LPS)")
        p.add_argument(f"--{tp}-blood-pool-centre", metavar="X,Y,Z", help=f"{tp} blood-pool sphere centre (mm, LPS)")
    p.add_argument("--suv", choices=("bw", "lbm"), default="lbm", help="SUV kind for DICOM PET (PERCIST uses lbm = SUL)")
    p.add_argument("--assume-suv", action="store_true", help="NIfTI/NRRD PET values are SUV/SUL")
    p.add_argument("--new-lesion-mm", type=float, default=30.0,
                   help="a follow-up lesion farther than this from every baseline lesion is new (mm, default 30)")
    p.set_defaults(func=run)


def _time_point(args, tp: str):
    from ..petwb.burden import lesion_table
    from ..petwb.inputs import parse_point, read_mask_on, read_suv_pet
    from ..petwb.reference import blood_pool_reference, liver_reference

    pet = read_suv_pet(getattr(args, tp), suv=args.suv, assume_suv=args.assume_suv)
    lesions = read_mask_on(getattr(args, f"{tp}_lesions"), pet, None, f"{tp} lesion map")
    organs_file = getattr(args, f"{tp}_organs")
    liver_c, pool_c = getattr(args, f"{tp}_liver_centre"), getattr(args, f"{tp}_blood_pool_centre")
    if liver_c:
        liver = liver_reference(pet, centre_mm=parse_point(liver_c))
    elif organs_file:
        liver = liver_reference(pet, read_mask_on(organs_file, pet, args.liver_roi, f"{tp} liver").binary(None))
    else:
        from ..errors import InputError

        raise InputError(None, f"the {tp} liver reference is missing: give --{tp}-organs or --{tp}-liver-centre")
    pool = None
    if pool_c:
        pool = blood_pool_reference(pet, centre_mm=parse_point(pool_c))
    elif organs_file:
        pool = blood_pool_reference(pet, read_mask_on(organs_file, pet, args.blood_pool_roi, f"{tp} blood pool").binary(None))
    return pet, lesion_table(pet, lesions), liver, pool


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance
    from ..petwb.reference import deauville_score, new_lesions, percist_response

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    _, base_rows, base_liver, base_pool = _time_point(args, "baseline")
    _, follow_rows, follow_liver, follow_pool = _time_point(args, "followup")
    if not base_rows:
        raise InputError(args.baseline_lesions, "no baseline lesion: PERCIST needs a measurable baseline lesion")
    peak_base = max(r["suv_peak"] for r in base_rows)
    peak_follow = max((r["suv_peak"] for r in follow_rows), default=0.0)
    new = new_lesions(base_rows, follow_rows, args.new_lesion_mm)
    resp = percist_response(peak_base, peak_follow, base_liver, follow_liver, new_lesion=bool(new))
    resp["new_lesion_labels"] = ";".join(map(str, new))
    resp["units"] = "SUL g/ml" if args.suv == "lbm" else "SUV g/ml"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([resp]).to_csv(out / "percist.csv", index=False)
    refs = [dict(time_point=tp, **ref.row()) for tp, ref in (("baseline", base_liver), ("followup", follow_liver),
                                                             ("baseline", base_pool), ("followup", follow_pool)) if ref]
    pd.DataFrame(refs).to_csv(out / "references.csv", index=False)
    if follow_pool is not None:
        scores = [{"label": r["label"], "structure": r["structure"], "suv_max": r["suv_max"],
                   "blood_pool_mean": follow_pool.mean, "liver_mean": follow_liver.mean,
                   "deauville": deauville_score(r["suv_max"], follow_pool.mean, follow_liver.mean)} for r in follow_rows]
        pd.DataFrame(scores).to_csv(out / "deauville.csv", index=False)
    (out / "percist.provenance.json").write_text(json.dumps(provenance({k: v for k, v in vars(args).items() if k != "func"},
                                                                       [args.baseline, args.followup]), indent=1, default=str))
    stable = "" if resp["liver_stable"] else "  (liver reference NOT stable: interpret with care)"
    print(f"{resp['category']}: SULpeak {peak_base:.2f} -> {peak_follow:.2f} ({resp['sulpeak_change_pct']:+.1f} %, "
          f"{resp['sulpeak_change']:+.2f} units), liver {resp['liver_mean_baseline']:.2f} -> {resp['liver_mean_followup']:.2f}"
          f"{stable}{'; new lesion(s) ' + resp['new_lesion_labels'] if new else ''}")
    return 0
