"""nmkit.metrics: segmentation metrics on real spacing.

* ``overlap``: Dice, IoU, sensitivity, precision, volume differences (ml);
* ``surface``: HD, HD95, ASSD, directed mean surface distances, normalised surface Dice, with the surfel-area
  definition of DeepMind's ``surface-distance`` (default) or the voxel-border definition of MONAI/medpy;
* ``lesion``: lesion-wise detection F1, false-positive/false-negative volume (autoPET);
* ``evaluate``: per-structure / per-case tables (``evaluate_pair``, ``evaluate_cases``);
* ``readers``: model-vs-reader against reader-vs-reader agreement, consensus, plot.
"""

from .evaluate import evaluate_cases, evaluate_pair, summarise
from .lesion import lesion_metrics
from .overlap import dice, iou, overlap_metrics
from .surface import SurfaceDistances, surface_distances, surface_metrics

__all__ = ["dice", "iou", "overlap_metrics", "surface_distances", "surface_metrics", "SurfaceDistances",
           "lesion_metrics", "evaluate_pair", "evaluate_cases", "summarise"]
