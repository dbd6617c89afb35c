"""Privacy audit on real chest radiographs at full scale (issue 18): planted copies vs real held-out patients, 3 seeds.

Run: .venv/bin/python bench/audit_real_radiographs.py  (reads $NMKIT_EXTERNAL_DATA or ../shared/data; ~6 s on 2 cores)
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import numpy as np, pandas as pd
from test_audit_real import perturb, split_patients
from nmkit.generate.audit import audit
from nmkit.io.radiograph import read_radiograph
root = os.environ.get('NMKIT_EXTERNAL_DATA', str(Path(__file__).resolve().parents[2] / 'shared' / 'data')) + '/cxr_unlabelled'
m=pd.read_csv(root+'/manifest.csv',dtype=str)
for seed in (0,1,2):
    tr,ho=split_patients(m,seed)
    train=[read_radiograph(f"{root}/images/{i}.png").array for i in tr.id]
    held=[read_radiograph(f"{root}/images/{i}.png").array for i in ho.id]
    rng=np.random.default_rng(seed)
    src=list(range(0,len(train),4))
    planted=[train[i].copy() if k%2==0 else perturb(train[i],rng) for k,i in enumerate(src)]
    r=audit(planted+held,train,size=64,normalisation='percentile',training_names=list(tr.id))
    c,o=r.table.iloc[:len(planted)],r.table.iloc[len(planted):]
    print(f"seed {seed}: train {len(train)} ({tr.patientid.nunique()} patients), held-out {len(held)} ({ho.patientid.nunique()} patients); planted {len(planted)} ({(len(planted)+1)//2} exact, {len(planted)//2} perturbed): flagged {int(c.memorised.sum())}/{len(planted)}, source found {int((c.nearest_training.values==np.array(list(tr.id))[src]).sum())}; held-out flagged {int(o.memorised.sum())}/{len(held)}; threshold {r.threshold:.4f}; max perturbed-copy distance {c.pixel_distance.max():.4f}; min held-out distance {o.pixel_distance.min():.4f}")
