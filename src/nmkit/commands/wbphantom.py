"""`nmkit wbphantom OUT_DIR`: the whole-body PET/CT digital phantom (and a simulated organ cohort) of
nmkit.petwb.phantom, for tests, demos and trying `nmkit delineate / burden / percist / organs / network`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ._args import at_least, positive_float

    p = sub.add_parser("wbphantom", help="whole-body PET/CT phantom with known lesions (+ follow-up scan, simulated cohort)",
                       description="Writes OUT_DIR/<case>/pet.nii.gz (SUV, g/ml), ct.nii.gz (HU), organs.nii.gz and "
                                   "lesions.nii.gz (label maps with .labels.json), truth.csv (lesion centre mm, volume ml, "
                                   "SUV) and OUT_DIR/dataset.csv (nmkit-dataset/1; time_point 1, and 2 with "
                                   "--followup-factor). With --cohort N also OUT_DIR/cohort_organs.csv (N patients x 10 "
                                   "organs SUVmean with a planted network), cohort_truth_edges.csv and cohort_outcome.csv.")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="noise / cohort random seed")
    p.add_argument("--voxel-mm", type=positive_float, default=4.0, help="voxel size (mm, default 4)")
    p.add_argument("--fwhm-mm", type=positive_float, default=6.0, help="PET resolution FWHM (mm, default 6)")
    p.add_argument("--noise", type=float, default=0.10, help="noise CoV at liver level (default 0.10)")
    p.add_argument("--followup-factor", type=positive_float, help="also write a follow-up scan with lesion SUVs x this")
    p.add_argument("--cohort", type=at_least(10), help="also simulate an organ table of this many patients")
    p.add_argument("--centres", type=at_least(1), default=1, help="cohort centres (batch effect 0.3 when > 1)")
    p.set_defaults(func=run)


def _write_case(ph, folder, case_id: str, time_point: int) -> dict:
    import pandas as pd

    from ..dataset import MaskRef
    from ..io.volume_files import write_volume
    from ..petwb.inputs import write_label_map

    folder.mkdir(parents=True, exist_ok=True)
    write_volume(ph.pet, folder / "pet.nii.gz")
    write_volume(ph.ct, folder / "ct.nii.gz")
    organs = write_label_map(ph.organs, folder / "organs.nii.gz")
    lesions = write_label_map(ph.lesions, folder / "lesions.nii.gz")
    pd.DataFrame(ph.truth).to_csv(folder / "truth.csv", index=False)
    masks = [MaskRef(str(organs), "labelmap", v, n, v, "phantom") for v, n in sorted(ph.organs.labels.items())]
    masks += [MaskRef(str(lesions), "labelmap", v, n, v, "phantom") for v, n in sorted(ph.lesions.labels.items())]
    return {"case_id": f"{case_id}_tp{time_point}", "patient_id": case_id, "time_point": time_point, "modality": "PT",
            "tracer": "FDG (simulated)", "image": str(folder / "pet.nii.gz"), "masks": masks, "suv": "simulated"}


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..dataset import new_table, write_dataset
    from ..errors import InputError
    from ..petwb.phantom import DEFAULT_LESIONS, make_phantom, simulate_cohort
    from ..provenance import provenance

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if not 0 <= args.noise < 1:
        raise InputError(None, f"--noise {args.noise}: give a CoV between 0 and 1")
    case = f"wbphantom_{args.seed}"
    base = make_phantom(voxel_mm=args.voxel_mm, fwhm_mm=args.fwhm_mm, noise=args.noise, seed=args.seed)
    rows = [_write_case(base, out / case / "tp1", case, 1)]
    if args.followup_factor:
        lesions = [dataclasses.replace(l, suv=l.suv * args.followup_factor) for l in DEFAULT_LESIONS]
        follow = make_phantom(lesions, voxel_mm=args.voxel_mm, fwhm_mm=args.fwhm_mm, noise=args.noise, seed=args.seed + 1000)
        rows.append(_write_case(follow, out / case / "tp2", case, 2))
    write_dataset(new_table(rows), out / "dataset.csv", provenance({k: v for k, v in vars(args).items() if k != "func"}))
    if args.cohort:
        table, truth, outcome = simulate_cohort(n=args.cohort, seed=args.seed, centres=args.centres,
                                                centre_effect=0.3 if args.centres > 1 else 0.0)
        table.to_csv(out / "cohort_organs.csv", index=False)
        truth.astype(int).to_csv(out / "cohort_truth_edges.csv")
        outcome.to_csv(out / "cohort_outcome.csv", index=False)
    print(f"phantom {case}: {len(rows)} scan(s), {len(base.truth)} lesions, "
          f"{sum(t['volume_ml'] for t in base.truth):.1f} ml in all -> {out}")
    return 0
