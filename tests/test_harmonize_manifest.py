"""`nmkit harmonize --manifest`: the batch column comes from the case table; identifiers are never harmonised."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nmkit.cli import main
from nmkit.dataset import new_table, write_dataset


def test_harmonize_takes_the_batch_from_the_case_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    centre = np.where(np.arange(n) % 2, "B", "A")
    cases = new_table([{"case_id": f"c{i}", "patient_id": f"P{i}", "image": f"img{i}.nii.gz", "centre": centre[i]}
                       for i in range(n)])
    write_dataset(cases, tmp_path / "cases.csv")
    shift = np.where(centre == "B", 5.0, 0.0)
    features = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "segment_number": 1, "study_date": 20200101,
                             "stat_mean": rng.normal(10, 1, n) + shift, "glcm_contrast": rng.normal(3, 0.5, n) * (1 + shift / 5)})
    features.to_csv(tmp_path / "features.csv", index=False)
    out = tmp_path / "harmonised.csv"
    assert main(["harmonize", "--features", str(tmp_path / "features.csv"), "--manifest", str(tmp_path / "cases.csv"),
                 "--batch-col", "centre", "--out", str(out)]) == 0
    result = pd.read_csv(out)
    means = result.groupby("centre").stat_mean.mean()
    assert abs(means["A"] - means["B"]) < 0.5 < abs(features.stat_mean[centre == "A"].mean() - features.stat_mean[centre == "B"].mean())
    assert (result.segment_number == 1).all() and (result.study_date == 20200101).all()  # identifiers untouched
    features.loc[0, "case_id"] = "unknown"
    features.to_csv(tmp_path / "features.csv", index=False)
    assert main(["harmonize", "--features", str(tmp_path / "features.csv"), "--manifest", str(tmp_path / "cases.csv"),
                 "--batch-col", "centre", "--out", str(out)]) == 2
