"""Benchmark: nmkit ComBat against neuroCombat (the reference implementation) on one synthetic multi-site table.

A radiomics-like table (samples x features) with four sites (location and scale effects), an age and a sex
effect. Both libraries harmonise it with the same options (parametric and non-parametric empirical Bayes);
the table reports the time (best of ``--repeats``), the speed-up and the largest absolute difference between
the two outputs (agreement check in the same run).

Run:  .venv/bin/python bench/bench_combat.py [--samples 400] [--features 1000] [--repeats 3]
(neuroCombat: ``.venv/bin/pip install neuroCombat``.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import pandas as pd


def make_table(n: int, p: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sites = rng.choice(["A", "B", "C", "D"], n, p=[0.4, 0.3, 0.2, 0.1])
    age = rng.integers(30, 80, n).astype(float)
    sex = rng.choice(["F", "M"], n)
    x = rng.normal(0, 1, (n, p)) * rng.uniform(0.5, 2, p) + 0.02 * age[:, None] + 0.3 * (sex == "M")[:, None]
    shift = {"A": 0.0, "B": 0.8, "C": -0.5, "D": 1.2}
    scale = {"A": 1.0, "B": 1.5, "C": 0.7, "D": 1.2}
    loc = np.array([shift[s] for s in sites])[:, None] * rng.uniform(0.5, 1.5, p)
    sc = np.array([scale[s] for s in sites])[:, None]
    return x * sc + loc, pd.DataFrame({"batch": sites, "age": age, "sex": sex})


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from nmkit.stats.combat import ComBat

    try:
        from neuroCombat import neuroCombat
    except ImportError:
        neuroCombat = None
    x, cov = make_table(args.samples, args.features)
    rows = []
    for parametric in (True, False):
        label = "parametric" if parametric else "non-parametric"
        t_ours, ours = best_time(lambda: ComBat(categorical=["sex"], continuous=["age"], parametric=parametric)
                                 .fit_transform(x, batch=cov["batch"], covariates=cov), args.repeats)
        row = {"empirical Bayes": label, "nmkit s": t_ours}
        if neuroCombat is not None:
            def ref():
                with contextlib.redirect_stdout(io.StringIO()):
                    return neuroCombat(x.T.copy(), cov, "batch", categorical_cols=["sex"], continuous_cols=["age"],
                                       parametric=parametric)["data"].T
            t_ref, out_ref = best_time(ref, args.repeats)
            row.update({"neuroCombat s": t_ref, "speed-up": t_ref / t_ours, "max |diff|": float(np.abs(out_ref - ours).max())})
        rows.append(row)
    print(f"ComBat on {args.samples} samples x {args.features} features, 4 sites, age + sex covariates "
          f"(best of {args.repeats})")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if neuroCombat is None:
        print("neuroCombat not installed: reference timings skipped (pip install neuroCombat)")


if __name__ == "__main__":
    main()
