"""M1+M2 (Kingma et al. 2014) written out in plain torch, to find settings that reach Pyro's table.

M1: a VAE 784-600-600-50 (softplus, Bernoulli, dynamically binarised digits, Adam lr 1e-3, batch 100)
on the first 50,000 MNIST training digits. M2 on its codes z1 ~ q(z1|x), drawn afresh each epoch:
q(y|z1) 50-500-10, q(z2|z1,y) and p(z1|y,z2) Gaussian with one hidden layer of 500, z2 of 50; the
M2 objective with y summed out by hand; alpha per labelled row (default 0.1 N / N_l as the paper).
Batches: 100 unlabelled codes plus *every* labelled one, weighted 1/(batches per epoch) so that an
epoch sums the objective once; ``--mixed`` uses pyrovae's batches instead (200 rows of all 50,000).
Test accuracy of arg max q(y | mean of q(z1|x)) at the epoch of best validation accuracy (the last
10,000 training digits). Results (JSON, rewritten every epoch) in ``--out``; docs/zoo.md cites them.

    export PYROVAE_DATA=../shared/data
    python benchmarks/m1m2_plain_torch.py --m1-epochs 40 --m2-epochs 100 \
        --out benchmarks/results/m1m2_plain_torch_a.json
    python benchmarks/m1m2_plain_torch.py --m1 benchmarks/results/m1m2_plain_torch_a-m1.pt --alpha 200 --lr 1e-3 \
        --m2-epochs 150 --out benchmarks/results/m1m2_plain_torch_d.json
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyrovae
from pyrovae.models.m2 import choose_labelled

p = argparse.ArgumentParser()
p.add_argument("--m1-epochs", type=int, default=30)
p.add_argument("--m2-epochs", type=int, default=100)
p.add_argument("--labels", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--alpha", type=float, default=None)
p.add_argument("--m1", default=None)
p.add_argument("--mixed", action="store_true")
p.add_argument("--lr", type=float, default=3e-4)
p.add_argument("--out", default="benchmarks/results/m1m2_plain_torch.json")
p.add_argument("--minutes", type=float, default=60)
p.add_argument("--active-only", action="store_true", help="M2 sees only M1's active units (as Kingma's code)")
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed)
train = pyrovae.load_dataset("mnist", "train")
test = pyrovae.load_dataset("mnist", "test")
X = train.images.float() / 255
Y = train.labels
Xtr, Ytr, Xva, Yva = X[:50000], Y[:50000], X[50000:], Y[50000:]
Xte, Yte = test.images.float() / 255, test.labels
sp = nn.Softplus()


def mlp(sizes):
    L = []
    for i, (u, v) in enumerate(zip(sizes[:-1], sizes[1:])):
        L.append(nn.Linear(u, v))
        if i < len(sizes) - 2:
            L.append(nn.Softplus())
    return nn.Sequential(*L)


# ---- M1
enc = mlp([784, 600, 600, 100])
dec = mlp([50, 600, 600, 784])
t0 = time.time()
if a.m1:
    st = torch.load(a.m1)
    enc.load_state_dict(st["enc"])
    dec.load_state_dict(st["dec"])
else:
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    for ep in range(a.m1_epochs):
        perm = torch.randperm(50000)
        tot = 0
        xb_all = torch.bernoulli(Xtr)
        for i in range(0, 50000, 100):
            x = xb_all[perm[i : i + 100]]
            h = enc(x)
            mu, s = h[:, :50], F.softplus(h[:, 50:]) + 1e-4
            z = mu + s * torch.randn_like(s)
            rec = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
            kl = 0.5 * (mu**2 + s**2 - 1 - 2 * s.log()).sum(-1)
            loss = -(rec - kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
        print(f"M1 epoch {ep + 1} -elbo {tot / 500:.2f} {time.time() - t0:.0f}s", flush=True)
    torch.save({"enc": enc.state_dict(), "dec": dec.state_dict()}, a.out.replace(".json", "-m1.pt"))


@torch.no_grad()
def q1(x):
    h = enc(x)
    return h[:, :50], F.softplus(h[:, 50:]) + 1e-4


with torch.no_grad():
    mtr, str_ = q1(Xtr)
    mva, _ = q1(Xva)
    mte, _ = q1(Xte)
# Kingma et al.'s code keeps the units whose posterior mean varies over the data (std > 0.1 on 1,000
# unlabelled digits); the others are ~N(0, 1) noise the classifier would have to learn to ignore
keep = mtr[:1000].std(0) > 0.1 if a.active_only else torch.ones(50, dtype=torch.bool)
mtr, str_, mva, mte = mtr[:, keep], str_[:, keep], mva[:, keep], mte[:, keep]
D1 = int(keep.sum())
print(f"M2 on {D1} of 50 M1 units", flush=True)
# ---- M2 on z1
C, Z = 10, 50
qy = mlp([D1, 500, C])
qz_v = nn.Linear(D1, 500)
qz_y = nn.Linear(C, 500, bias=False)
qz_h = nn.Linear(500, 2 * Z)
px_v = nn.Linear(Z, 500)
px_y = nn.Linear(C, 500, bias=False)
px_h = nn.Linear(500, 2 * D1)
mods = nn.ModuleList([qy, qz_v, qz_y, qz_h, px_v, px_y, px_h])
opt = torch.optim.Adam(mods.parameters(), lr=a.lr)
lab = choose_labelled(Ytr, a.labels, 10, a.seed)
li = lab.nonzero()[:, 0]
ui = (~lab).nonzero()[:, 0]
alpha = a.alpha if a.alpha is not None else 0.1 * 50000 / a.labels
eye = torch.eye(C)


def normal_lp(v, m, s):
    return (-0.5 * ((v - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def L(z1, yo):  # z1 (..., B, 50), yo one-hot (..., B, C) -> (..., B)
    h = sp(qz_v(z1) + qz_y(yo))
    o = qz_h(h)
    m, s = o[..., :Z], F.softplus(o[..., Z:]) + 1e-4
    z2 = m + s * torch.randn_like(s)
    g = sp(px_v(z2) + px_y(yo))
    o2 = px_h(g)
    m1, s1 = o2[..., :D1], F.softplus(o2[..., D1:]) + 1e-3
    return (
        normal_lp(z1, m1, s1)
        + normal_lp(z2, torch.zeros_like(z2), torch.ones_like(z2))
        - math.log(C)
        - normal_lp(z2, m, s)
    )


hist = []
best = (-1, None)
nb = len(ui) // 100
for ep in range(a.m2_epochs):
    t1 = time.time()
    z1all = mtr + str_ * torch.randn_like(mtr)
    perm = ui[torch.randperm(len(ui))]
    tot = 0
    if a.mixed:  # the library's batches: 200 rows of all 50,000, labelled ones among them, weight 1
        order = torch.randperm(50000)
    for b in range(nb if not a.mixed else 250):
        if a.mixed:
            rows = order[b * 200 : (b + 1) * 200]
            isl = lab[rows]
            z = z1all[rows]
            yy = Ytr[rows]
            logq = F.log_softmax(qy(z), -1)
            Lu = L(z.expand(C, -1, -1), eye[:, None, :].expand(C, z.shape[0], C))
            qyp = logq.exp()
            U = (qyp * Lu.T).sum(-1) - (qyp * logq).sum(-1)
            Ll = L(z, eye[yy])
            ce = F.cross_entropy(logq, yy, reduction="none")
            loss = (-(U * ~isl).sum() + ((-Ll + alpha * ce) * isl).sum()) / 200
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
            continue
        zu = z1all[perm[b * 100 : (b + 1) * 100]]
        logq = F.log_softmax(qy(zu), -1)  # (B, C)
        Lu = L(zu.expand(C, -1, -1), eye[:, None, :].expand(C, zu.shape[0], C))  # (C, B)
        qyp = logq.exp()
        U = (qyp * Lu.T).sum(-1) - (qyp * logq).sum(-1)
        zl = z1all[li]
        yl = Ytr[li]
        Ll = L(zl, eye[yl])
        ce = F.cross_entropy(qy(zl), yl, reduction="none")
        # every batch carries all labelled rows, weighted 1/nb so that one epoch sums the objective once
        loss = (-U.sum() + (-Ll.sum() + alpha * ce.sum()) / nb) / 100
        opt.zero_grad()
        loss.backward()
        opt.step()
        tot += loss.item()
    with torch.no_grad():
        va = (qy(mva).argmax(-1) == Yva).float().mean().item()
        te = (qy(mte).argmax(-1) == Yte).float().mean().item()
    hist.append({"epoch": ep + 1, "loss": tot / nb, "val": va, "test": te, "s": time.time() - t1})
    if va > best[0]:
        best = (va, te, ep + 1)
    print(
        f"M2 epoch {ep + 1} loss {tot / nb:.2f} val {va:.4f} test {te:.4f} "
        f"best-val test {best[1]:.4f}@{best[2]} {time.time() - t1:.1f}s",
        flush=True,
    )
    json.dump({"args": vars(a), "alpha": alpha, "m1_units": D1, "hist": hist, "best": best}, open(a.out, "w"))
    if time.time() - t0 > a.minutes * 60:
        break
