"""`nmkit featuremap`: voxel-wise first-order feature maps (local mean, SD, skewness, ...) written as images.

Examples::

    nmkit featuremap --image pet.nii.gz --mask lesion.nii.gz --radius-mm 5 --out maps/
    nmkit featuremap --image ct_dicom/ --mask rtstruct.dcm --roi 'GTV*' --features mean,sd,kurt,p90 --out maps/
    nmkit featuremap --image ct.nii.gz --mask gtv.nii.gz --config log.yaml --out maps/   # maps of a LoG response

Every ROI voxel gets the statistic of the voxels in a box of 2 r + 1 voxels per axis around it, r = floor(radius /
spacing + 0.5) (nmkit.radiomics.featuremap); voxels outside the ROI are NaN. ``cm_*`` features are local GLCM features
(distance 1, symmetric, the 13 directions merged; in-plane when the window is one slice thick) of grey levels
discretised over the ROI (``--bins`` / ``--bin-width``). ``--within-roi`` keeps only ROI voxels in the
windows. ``--config`` applies the ``filter:`` section of a radiomics YAML (IBSI-2 filter on the image's own grid)
first. Writes OUT/featuremap_<feature>.nii.gz (float32, the image's geometry), featuremap.units.json (nmkit-units/1)
and featuremap.provenance.json.
"""

from __future__ import annotations

import argparse

from ._args import at_least, positive_float


def register(subparsers) -> None:
    p = subparsers.add_parser("featuremap", help="voxel-wise local first-order feature maps of an ROI, as NIfTI images",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="image file (NIfTI/NRRD) or DICOM series folder")
    p.add_argument("--mask", help="label map, DICOM RTSTRUCT/SEG on the image (default: the whole image)")
    p.add_argument("--roi", help="structure selector: number, glob ('GTV*') or name (default: every structure)")
    p.add_argument("--radius-mm", type=positive_float, default=5.0, help="neighbourhood half-width in mm (default 5)")
    p.add_argument("--features", default="mean,sd,skew,kurt,min,max,median",
                   help="comma-separated: mean,var,sd,skew,kurt,energy,rms,count,min,max,range,median,p10,p25,p75,p90,"
                        "iqr; local GLCM: cm_joint_avg,cm_joint_var,cm_contrast,cm_diff_avg,cm_inv_diff,"
                        "cm_inv_diff_mom,cm_auto_corr,cm_corr,cm_clust_tend")
    p.add_argument("--within-roi", action="store_true", help="windows hold only ROI voxels (default: every image voxel)")
    disc = p.add_mutually_exclusive_group()
    disc.add_argument("--bins", type=at_least(2), default=32,
                      help="cm_* features: fixed bin number over the ROI's intensity range (default 32)")
    disc.add_argument("--bin-width", type=positive_float, help="cm_* features: fixed bin size in image units, from the ROI minimum")
    p.add_argument("--config", help="radiomics YAML whose filter: section is applied to the image first")
    p.add_argument("--suv", choices=["bw", "lbm"], help="convert a DICOM PET to SUV first")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..errors import InputError
    from ..io.reader import read_image
    from ..io.volume_files import write_volume
    from ..provenance import provenance
    from ..radiomics.featuremap import feature_units, local_feature_maps
    from ..units import image_unit

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    feats = [f.strip() for f in args.features.split(",") if f.strip()]
    if not feats:
        raise InputError(None, "--features: give at least one feature")
    spec = None
    if args.config:
        from ..radiomics.presets import load_config

        spec = load_config(args.config).filter
        if spec is None:
            raise InputError(args.config, "has no filter: section (featuremap applies only the filter)")
    image = read_image(args.image, suv=args.suv)
    planar = image.ndim_spatial == 2 and image.array.ndim == 2  # scintigraphy, radiograph: one-slice volume, disc neighbourhood
    if image.array.ndim != 3 and not planar:
        raise InputError(args.image, f"feature maps need one 3D image or one planar frame, got array shape {image.array.shape}")
    roi = None
    if args.mask:
        from ..io.roi import load_rois

        mask = load_rois(args.mask, image, selector=args.roi)
        roi = mask.binary(None)
        if not roi.any():
            raise InputError(args.mask, "the selected structures hold no voxel of the image grid")
    elif args.roi:
        raise InputError(None, "--roi needs --mask")
    grid = image
    if planar:
        from ..radiomics.planar import lift

        image, _ = lift(image)
        roi = None if roi is None else roi[None]
    values = np.asarray(image.array, dtype=np.float64)
    unit = image_unit(image.units, image.modality)
    if spec is not None:
        from ..radiomics.filters import apply_filter, response_unit

        values = apply_filter(values, tuple(image.spacing), spec)
        unit = response_unit(spec, unit)
    from ..radiomics.config import Discretisation

    disc = (Discretisation(method="FBS", n_bins=None, bin_width=args.bin_width) if args.bin_width
            else Discretisation(method="FBN", n_bins=args.bins))
    try:
        maps = local_feature_maps(values, tuple(image.spacing), args.radius_mm, roi, feats, args.within_roi, disc)
    except InputError as exc:
        raise InputError(exc.path or args.image, exc.problem) from exc
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in maps.items():
        written.append(str(write_volume(grid.with_array(arr[0] if planar else arr), out / f"featuremap_{name}.nii.gz")))
    units = {"scheme": "nmkit-units/1", "image_units": unit,
             "note": "unit of the voxel values of each featuremap_<feature>.nii.gz",
             "columns": dict(feature_units(maps, unit))}
    (out / "featuremap.units.json").write_text(json.dumps(units, indent=1))
    opts = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "featuremap.provenance.json").write_text(json.dumps(
        provenance(opts, [str(args.image)] + ([str(args.mask)] if args.mask else []),
                   filter=None if spec is None else spec.__dict__, outputs=written), indent=1, default=str))
    n = int(roi.sum()) if roi is not None else int(np.prod(values.shape))
    print(f"wrote {len(written)} feature map(s) of {n} voxels to {out} (radius {args.radius_mm:g} mm)")
    return 0
