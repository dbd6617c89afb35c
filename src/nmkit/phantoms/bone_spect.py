"""A patient-like Tc-99m bone SPECT/CT cohort (lumbar spine and pelvis) with known truth, for paired reconstruction studies.

Each simulated patient has an elliptical body outline, five lumbar vertebrae (cortical shell, trabecular body,
neural arch, spinous and transverse processes), sacrum and iliac wings, a liver-like uniform region, kidneys, an
optional bladder, and 1-4 spherical lesions of 8-30 mm with 2-10x the trabecular-bone uptake (never in L4, which is
kept as a uniform reference region, as in quantitative bone SPECT studies). Sizes, shapes and concentrations vary by
patient; everything follows from the seed.

Voxels hold tissue fractions (the anatomy is painted on a 2x supersampled grid and averaged), so activity, mu map and
CT are consistent and partial-volume effects are physical. Both reconstructions of ``nmkit.phantoms.spect_sim`` are
run on the same Poisson projections per patient; ``generate_cohort`` writes per-patient DICOM (CT, NM RECON TOMO,
PT-style Bq/ml) and NIfTI truth, plus ``cases.csv`` and ``lesions.csv``. Bad cases are logged and skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import DEVICE_HELP, device_option
from ..io.image import Image, Mask
from .spect_sim import MU_CORTICAL_BONE_140, MU_WATER_140, CameraModel

log = logging.getLogger(__name__)

# tissue classes: (name, HU, mu at 140 keV in 1/mm)
TISSUES: dict[int, tuple[str, float, float]] = {
    0: ("air", -1000.0, 0.0),
    1: ("soft_tissue", 40.0, MU_WATER_140 * 1.02),
    2: ("liver", 60.0, MU_WATER_140 * 1.04),
    3: ("kidney", 30.0, MU_WATER_140 * 1.03),
    4: ("bladder", 10.0, MU_WATER_140),
    5: ("trabecular_bone", 220.0, 0.0180),
    6: ("cortical_bone", 1000.0, MU_CORTICAL_BONE_140),
    7: ("l4_trabecular", 220.0, 0.0180),
    8: ("spinal_canal", 20.0, MU_WATER_140),
}
LESION_CLASS0 = 10
MASK_LABELS = {1: "bone", 2: "l4_body", 3: "liver", 4: "bladder", 5: "kidneys"}


@dataclass
class BoneSpectConfig:
    """Grid, camera and reconstruction settings of the bone SPECT/CT cohort."""

    n: int = 128
    nz: int = 64
    voxel_mm: float = 4.42
    bladder: bool = True
    ct_noise_hu: float = 10.0
    osem_iterations: int = 4
    osem_subsets: int = 10
    osem_post_filter_mm: float = 10.0
    ctg_iterations: int = 8
    ctg_beta: float = 0.01
    camera: CameraModel = field(default_factory=lambda: CameraModel(time_per_view_s=15.0))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["camera"] = self.camera.as_dict()
        return d


@dataclass
class BonePatient:
    """Truth of one simulated patient."""

    patient_id: str
    activity: Image  # Bq/ml
    mu: Image  # 1/mm
    ct: Image  # HU
    masks: Mask  # MASK_LABELS plus lesion_i at 10 + i
    lesions: list[dict[str, Any]]
    concentrations_bq_ml: dict[str, float]
    params: dict[str, Any]

    @property
    def activity_bq_per_voxel(self) -> np.ndarray:
        return self.activity.array.astype(np.float64) * self.activity.voxel_volume / 1000.0


def _ellipsoid(X, Y, Z, c, r, angle_deg: float = 0.0):
    t = math.radians(angle_deg)
    dx, dy = X - c[0], Y - c[1]
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / r[0]) ** 2 + (v / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0


def _elliptic_cylinder(X, Y, Z, c, ax: float, ay: float, z0: float, z1: float):
    return (((X - c[0]) / ax) ** 2 + ((Y - c[1]) / ay) ** 2 <= 1.0) & (Z >= z0) & (Z <= z1)


def _box(X, Y, Z, x0, x1, y0, y1, z0, z1):
    return (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1) & (Z >= z0) & (Z <= z1)


def make_patient(config: BoneSpectConfig, seed: int, patient_id: str | None = None) -> BonePatient:
    """One patient: anatomy, activity (Bq/ml), mu map, CT and truth masks on the configured grid."""
    cfg = config
    rng = np.random.default_rng(seed)
    n, nz, v = cfg.n, cfg.nz, float(cfg.voxel_mm)
    ss = 2
    if n * v < 400.0 or nz * v < 270.0:
        raise ValueError(f"grid {n}x{n}x{nz} at {v} mm is too small for the lumbar/pelvis anatomy (400 x 400 x 270 mm)")
    c = (np.arange(n * ss) + 0.5) / ss * v - n * v / 2.0
    cz = (np.arange(nz * ss) + 0.5) / ss * v - nz * v / 2.0
    X, Y, Z = c[None, None, :], c[None, :, None], cz[:, None, None]
    lab = np.zeros((nz * ss, n * ss, n * ss), np.uint8)

    a_body, b_body = rng.uniform(150, 185), rng.uniform(100, 125)
    if cfg.camera.radius_mm < a_body + 10.0:
        raise ValueError(f"camera orbit radius {cfg.camera.radius_mm} mm would cut through a {2 * a_body:.0f} mm wide body")
    scale = rng.uniform(0.9, 1.1)
    yv = b_body - rng.uniform(62, 72)  # vertebral body centre (posterior, +y in LPS)
    z_top = nz * v / 2.0 - 8.0
    lab[((X / a_body) ** 2 + (Y / b_body) ** 2 <= 1.0) & (Z > -1e9)] = 1
    # organs
    liver_c = (-rng.uniform(70, 90), -rng.uniform(0, 20), z_top - rng.uniform(10, 25))
    lab[_ellipsoid(X, Y, Z, liver_c, (rng.uniform(55, 70), rng.uniform(55, 70), rng.uniform(45, 60)))
        & ((X / a_body) ** 2 + (Y / b_body) ** 2 <= 0.85)] = 2
    zk = z_top - rng.uniform(45, 60)
    for s in (-1, 1):
        lab[_ellipsoid(X, Y, Z, (s * 70 * scale, yv + 5, zk + s * 8), (28, 22, 50), angle_deg=s * 25)] = 3
    # vertebrae L1..L5 from the top
    h, disc = 26.0 * scale, 9.0 * scale
    ax, ay = 24.0 * scale, 18.0 * scale
    vertebrae = {}
    z1 = z_top
    for i in range(1, 6):
        z0 = z1 - h
        zc = 0.5 * (z0 + z1)
        yc = yv - 4.0 * math.sin(math.pi * (i - 1) / 4.0)  # mild lordosis
        vertebrae[f"L{i}"] = (0.0, yc, zc)
        arch_c = yc + ay + 12.0 * scale
        lab[((X**2 + (Y - arch_c) ** 2) <= (16 * scale) ** 2) & (Z >= z0 + 3) & (Z <= z1 - 3)] = 6
        lab[_box(X, Y, Z, -5, 5, arch_c, arch_c + 32 * scale, z0 + 4, z1 - 6)] = 6
        lab[_box(X, Y, Z, -45 * scale, 45 * scale, arch_c - 6, arch_c + 4, zc - 5, zc + 5)] = 6
        lab[(X**2 + (Y - arch_c) ** 2 <= (8 * scale) ** 2) & (Z >= z0) & (Z <= z1)] = 8
        lab[_elliptic_cylinder(X, Y, Z, (0, yc), ax, ay, z0, z1)] = 6
        lab[_elliptic_cylinder(X, Y, Z, (0, yc), ax - 2.5, ay - 2.5, z0 + 2.5, z1 - 2.5)] = 7 if i == 4 else 5
        z1 = z0 - disc
    # sacrum and iliac wings below L5
    zs1 = z1
    zs0 = zs1 - 70.0 * scale
    zsc = 0.5 * (zs0 + zs1)
    lab[_ellipsoid(X, Y, Z, (0, yv + 8, zsc), (46 * scale, 20 * scale, 36 * scale))] = 6
    lab[_ellipsoid(X, Y, Z, (0, yv + 8, zsc), (43 * scale, 17 * scale, 33 * scale))] = 5
    sites = {"sacrum": (0.0, yv + 8, zsc)}
    for s, side in ((-1, "right"), (1, "left")):
        cen = (s * 95 * scale, yv - 8, zsc + 10)
        inner = ((X / (a_body - 12)) ** 2 + (Y / (b_body - 12)) ** 2 <= 1.0)  # bone stays under the skin
        lab[_ellipsoid(X, Y, Z, cen, (18 * scale, 58 * scale, 50 * scale), angle_deg=-s * 35) & inner] = 6
        lab[_ellipsoid(X, Y, Z, cen, (15 * scale, 55 * scale, 47 * scale), angle_deg=-s * 35) & inner] = 5
        sites[f"ilium_{side}"] = cen
    if cfg.bladder:
        lab[_ellipsoid(X, Y, Z, (0, -b_body * 0.45, zs0 + 15), (rng.uniform(35, 50), rng.uniform(28, 38), rng.uniform(28, 38)))] = 4
    # lesions (never in L4)
    for k in ("L1", "L2", "L3", "L5"):
        sites[k] = vertebrae[k]
    names = sorted(sites)
    n_les = int(rng.integers(1, 5))
    chosen = rng.choice(names, size=n_les, replace=False)
    bone_kbq = rng.uniform(15, 25)
    lesions = []
    for i, site in enumerate(chosen, start=1):
        d = float(rng.uniform(8, 30))
        if site.startswith("L"):
            d = min(d, 2 * ay - 4)  # keep vertebral lesions inside the body
        factor = float(rng.uniform(2, 10))
        cen = np.array(sites[site]) + rng.uniform(-4, 4, 3)
        lab[((X - cen[0]) ** 2 + (Y - cen[1]) ** 2 + (Z - cen[2]) ** 2 <= (d / 2) ** 2) & (lab >= 5)] = LESION_CLASS0 + i
        lesions.append({"label": LESION_CLASS0 + i, "name": f"lesion_{i}", "site": str(site), "diameter_mm": d,
                        "uptake_factor": factor, "x_mm": float(cen[0]), "y_mm": float(cen[1]), "z_mm": float(cen[2]),
                        "true_bq_ml": factor * bone_kbq * 1000.0})
    conc = {"soft_tissue": rng.uniform(1.5, 3.0), "liver": rng.uniform(2.5, 4.0), "kidney": rng.uniform(6, 10),
            "bladder": rng.uniform(60, 150), "trabecular_bone": bone_kbq, "cortical_bone": bone_kbq * rng.uniform(1.2, 1.6)}
    conc = {k: float(val) * 1000.0 for k, val in conc.items()}  # Bq/ml
    conc_by_class = {0: 0.0, 1: conc["soft_tissue"], 2: conc["liver"], 3: conc["kidney"], 4: conc["bladder"],
                     5: conc["trabecular_bone"], 6: conc["cortical_bone"], 7: conc["trabecular_bone"], 8: conc["soft_tissue"]}
    hu_by_class = {k: t[1] for k, t in TISSUES.items()}
    mu_by_class = {k: t[2] for k, t in TISSUES.items()}
    for les in lesions:
        conc_by_class[les["label"]] = les["true_bq_ml"]
        hu_by_class[les["label"]] = float(TISSUES[5][1] + rng.uniform(0, 500))  # mixed lytic/sclerotic appearance
        mu_by_class[les["label"]] = TISSUES[5][2]

    # average the supersampled labels into per-voxel fractions
    shape = (nz, n, n)
    act = np.zeros(shape)
    mu = np.zeros(shape)
    hu = np.zeros(shape)
    fracs = {}
    for cls in np.unique(lab):
        f = (lab == cls).reshape(nz, ss, n, ss, n, ss).mean(axis=(1, 3, 5))
        fracs[int(cls)] = f
        act += f * conc_by_class[int(cls)]
        mu += f * mu_by_class[int(cls)]
        hu += f * hu_by_class[int(cls)]
    hu += np.random.default_rng(seed + 7919).normal(0, cfg.ct_noise_hu, shape) * (fracs.get(0, np.zeros(shape)) < 0.5)
    zero = np.zeros(shape)
    masks = np.zeros(shape, np.uint8)
    bone = sum(fracs.get(k, zero) for k in (5, 6, 7)) + sum(fracs.get(x["label"], zero) for x in lesions)
    masks[bone >= 0.5] = 1
    masks[fracs.get(7, zero) >= 0.5] = 2
    masks[fracs.get(2, zero) >= 0.5] = 3
    masks[fracs.get(4, zero) >= 0.5] = 4
    masks[fracs.get(3, zero) >= 0.5] = 5
    labels = dict(MASK_LABELS)
    for les in lesions:
        masks[fracs.get(les["label"], zero) >= 0.5] = les["label"]
        labels[les["label"]] = les["name"]
        les["mask_voxels"] = int(np.count_nonzero(masks == les["label"]))
    origin = (-(n - 1) / 2.0 * v, -(n - 1) / 2.0 * v, -(nz - 1) / 2.0 * v)
    geo = dict(spacing=(v, v, v), origin=origin)
    pid = patient_id or f"BONE{seed:04d}"
    meta = {"phantom": "bone SPECT/CT patient", "radionuclide": "Tc-99m", "patient_id": pid}
    return BonePatient(
        patient_id=pid,
        activity=Image(act.astype(np.float32), modality="NM", units="BQML", meta=dict(meta), **geo),
        mu=Image(mu.astype(np.float32), modality="MU", units="1/mm", meta=dict(meta), **geo),
        ct=Image(np.round(hu).astype(np.int16), modality="CT", units="HU", meta=dict(meta), **geo),
        masks=Mask(masks, modality="SEG", labels=labels, meta=dict(meta), **geo),
        lesions=lesions, concentrations_bq_ml=conc,
        params={"body_semi_axes_mm": [a_body, b_body], "scale": scale, "seed": seed},
    )


@dataclass
class BoneStudy:
    patient: BonePatient
    counts: np.ndarray
    osem: Image
    ct_guided: Image
    timings_s: dict[str, float]


def simulate_patient(config: BoneSpectConfig, seed: int, patient_id: str | None = None, device: str | None = None) -> BoneStudy:
    """Truth -> Poisson projections -> classic OSEM and CT-guided reconstructions (Bq/ml)."""
    import time

    from .spect_sim import reconstruct_ct_guided, reconstruct_osem, simulate_projections

    t0 = time.perf_counter()
    pt = make_patient(config, seed, patient_id)
    sp = pt.activity.spacing
    t1 = time.perf_counter()
    _, counts = simulate_projections(pt.activity_bq_per_voxel, pt.mu.array, sp, config.camera, seed=seed, device=device)
    t2 = time.perf_counter()
    k = 1000.0 / pt.activity.voxel_volume
    osem_img = reconstruct_osem(counts, pt.mu.array, sp, config.camera, config.osem_iterations, config.osem_subsets,
                                config.osem_post_filter_mm, device=device) * k
    t3 = time.perf_counter()
    ctg = reconstruct_ct_guided(counts, pt.mu.array, pt.ct.array, sp, config.camera, config.ctg_iterations,
                                config.osem_subsets, config.ctg_beta, device=device) * k
    t4 = time.perf_counter()
    base = {"radionuclide": "Tc-99m", "patient_id": pt.patient_id}
    return BoneStudy(
        patient=pt, counts=counts,
        osem=pt.activity.with_array(osem_img.astype(np.float32), meta=dict(base, reconstruction="OSEM AC")),
        ct_guided=pt.activity.with_array(ctg.astype(np.float32), meta=dict(base, reconstruction="CT-guided PSF MAP-EM (zone RDP)")),
        timings_s={"phantom": t1 - t0, "projection": t2 - t1, "osem": t3 - t2, "ct_guided": t4 - t3},
    )


def region_means(image: np.ndarray, patient: BonePatient) -> dict[str, float]:
    """Mean Bq/ml in L4, the liver region and each lesion VOI."""
    m = patient.masks.array
    out = {"l4_body": float(image[m == 2].mean()), "liver": float(image[m == 3].mean())}
    for les in patient.lesions:
        sel = m == les["label"]
        out[les["name"]] = float(image[sel].mean()) if sel.any() else float("nan")
    return out


def generate_cohort(out_dir: str | Path, n_patients: int = 20, seed: int = 0, config: BoneSpectConfig | None = None,
                    device: str | None = None) -> Path:
    """Simulate and write ``n_patients`` bone SPECT/CT studies; returns the path of ``cases.csv``.

    Patient ``i`` uses seed ``seed * 100003 + i`` (reproducible and independent of ``n_patients``). A patient that
    fails is logged and skipped.
    """
    from .spect_dicom import write_spect_ct_study

    cfg = config or BoneSpectConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases, lesion_rows = [], []
    for i in range(n_patients):
        pid = f"BONE{seed:03d}_{i + 1:03d}"
        s = seed * 100003 + i
        try:
            st = simulate_patient(cfg, s, pid, device=device)
            pt = st.patient
            w = write_spect_ct_study(
                out / pid, ct=pt.ct, recons={"OSEM": st.osem, "CTGUIDED": st.ct_guided},
                truth={"activity_bqml": pt.activity, "masks": pt.masks, "mu_per_mm": pt.mu}, patient_id=pid,
                patient_name=f"BONE^{i + 1:03d}", study_description="Tc-99m bone SPECT/CT lumbar/pelvis (simulated)",
                config=cfg.as_dict(), extra={"patient_seed": s, "lesions": pt.lesions, "concentrations_bq_ml": pt.concentrations_bq_ml,
                                             "params": pt.params, "timings_s": st.timings_s}, seed=s, body_part="LSPINE")
        except Exception as exc:  # batch job: log and skip the case
            log.error("bone SPECT case %s (seed %d) failed and is skipped: %s", pid, s, exc)
            continue
        rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
        osem_means, ctg_means = region_means(st.osem.array, pt), region_means(st.ct_guided.array, pt)
        truth_means = region_means(pt.activity.array, pt)  # what a perfect reconstruction gives in the same VOIs
        cases.append({
            "case_id": pid, "seed": s, "n_lesions": len(pt.lesions), "ct_dir": rel(out / pid / "CT"),
            "osem_pt_dir": rel(out / pid / "OSEM_PT"), "ctguided_pt_dir": rel(out / pid / "CTGUIDED_PT"),
            "osem_nm": rel(w["OSEM_NM"]), "ctguided_nm": rel(w["CTGUIDED_NM"]),
            "truth_activity": rel(w["truth_activity_bqml"]), "truth_masks": rel(w["truth_masks"]),
            "true_l4_bq_ml": pt.concentrations_bq_ml["trabecular_bone"], "true_liver_bq_ml": pt.concentrations_bq_ml["liver"],
            "truth_voi_l4_bq_ml": truth_means["l4_body"], "truth_voi_liver_bq_ml": truth_means["liver"],
            "osem_l4_bq_ml": osem_means["l4_body"], "ctguided_l4_bq_ml": ctg_means["l4_body"],
            "osem_liver_bq_ml": osem_means["liver"], "ctguided_liver_bq_ml": ctg_means["liver"],
        })
        for les in pt.lesions:
            lesion_rows.append({"case_id": pid, **{k: les[k] for k in ("label", "name", "site", "diameter_mm", "uptake_factor", "true_bq_ml", "mask_voxels")},
                                "truth_voi_mean_bq_ml": truth_means[les["name"]], "osem_mean_bq_ml": osem_means[les["name"]], "ctguided_mean_bq_ml": ctg_means[les["name"]]})
        log.info("bone SPECT case %s written (%d lesions)", pid, len(pt.lesions))
    for name, rows in (("cases.csv", cases), ("lesions.csv", lesion_rows)):
        with open(out / name, "w", newline="") as fh:
            if rows:
                wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
    write_case_table(out, cases)
    return out / "cases.csv"


def write_case_table(out: Path, cases: list[dict]) -> Path | None:
    """``out/dataset.csv`` (``nmkit.dataset``): one row per reconstruction (OSEM, CT-guided) of each patient, the truth
    label map as its mask, so that ``nmkit compare --manifest out/dataset.csv --a OSEM --b CTGUIDED`` and the
    segmentation commands read the cohort directly."""
    from ..dataset import MaskRef, new_table, write_dataset

    rows = []
    for case in cases:
        masks = [MaskRef(str(out / case["truth_masks"]), "labelmap", reader="truth")]
        for recon, column in (("OSEM", "osem_pt_dir"), ("CTGUIDED", "ctguided_pt_dir")):
            rows.append({"case_id": f"{case['case_id']}_{recon}", "patient_id": case["case_id"], "modality": "PT",
                         "tracer": "Tc-99m bone (simulated)", "series_description": recon, "image": str(out / case[column]),
                         "masks": masks, "n_lesions": case["n_lesions"]})
    if not rows:
        return None
    return write_dataset(new_table(rows), out / "dataset.csv", {"producer": "nmkit phantom bone-spect"})


# ----- CLI --------------------------------------------------------------------------------------------
def register_phantom(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bone-spect`` to the ``nmkit phantom`` sub-commands."""
    p = subparsers.add_parser("bone-spect", help="patient-like Tc-99m bone SPECT/CT cohort with both reconstructions")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=20, help="number of patients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--voxel-mm", type=float, default=4.42)
    p.add_argument("--views", type=int, default=120)
    p.add_argument("--time-per-view", type=float, default=15.0)
    p.add_argument("--no-bladder", action="store_true")
    p.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    p.set_defaults(func=run_bone_spect)


def run_bone_spect(args: argparse.Namespace) -> int:
    cfg = BoneSpectConfig(n=args.matrix, nz=args.slices, voxel_mm=args.voxel_mm, bladder=not args.no_bladder,
                          camera=CameraModel(n_views=args.views, time_per_view_s=args.time_per_view))
    path = generate_cohort(args.out, args.n, args.seed, cfg, device=args.device)
    print(path)
    return 0
