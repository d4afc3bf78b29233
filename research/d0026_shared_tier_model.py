"""Decision 0026: does one model of all three tiers' outcomes (a shared embedding model, tier offsets and small
per-tier corrections) route better from a new lineup's first K labels than independent per-tier models?

What makes a query hard is mostly the same for every tier, and each label shows it three times; a router saves
where every tier succeeds or every tier fails. `fit_shared` fits one logistic regression on the three tiers'
outcomes stacked: tier t's logit is its offset plus the shared model plus t's own correction scaled by `apart`
(penalised 1/apart^2 as much), with each tier keeping its own weights on the prior heads' logits. It folds into an
ordinary head (coef, intercept), so the classifier would serve it unchanged.

`--fit` runs decision 0022's fits (`research.d0022_small_sample_calibration.fit_cache`: leave one source out, K
records drawn by id hash, `tierwise train`'s `fit_head` with the priors) with the model choice widened: the
out-of-fold log loss chooses among the shipped grid and the same grid with the tiers shared (`--apart`), cached
under OUT/apart-VALUES/cache in 0022's format. The default compares, draw by draw, the curve savings@95 and the
shipped point (0022's calibration) on each file's unseen records against 0022's own cache of the same draws.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0026_shared_tier_model --fit --apart 0.5 --draws 3,4,5
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0026_shared_tier_model --fit --apart 0.5 --k 200,400 \
        --draws 0,1,2,6,7,8,9,10,11
    .venv/bin/python -m research.d0026_shared_tier_model --apart 0.5 --k 200,400 --draws 0,1,2,3,4,5,6,7,8,9,10,11

The baseline cache comes from `research.d0022_small_sample_calibration --fit` (same draws).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from tierwise.data import shared_files
from tierwise.metrics import savings_at_quality
from tierwise.tiers import N_TIERS
from tierwise_tools import fitting
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.paths import ROOT
from tierwise_tools.prior import Prior

from . import d0022_small_sample_calibration as d0022

OUT = ROOT / "build" / "research" / "d0026"
OFFSET_SCALE = 10.0  # the tier offsets are features of this size, so the penalty barely touches them
_chosen: dict[str, float | None] = {"apart": None}  # what the patched `fit` fits now (see `patch`)


def fit_shared(x: np.ndarray, ok: np.ndarray, c: float, prior: Prior | None, scale: float,
               apart: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef (3, d), intercept (3,)) of one logistic model of the three tiers' outcomes, folded per tier."""
    n, d = x.shape
    logits = np.zeros((n, 0)) if prior is None else prior.features(x, scale)[:, :len(prior.biases)]
    k = logits.shape[1]
    own_start = N_TIERS * (1 + k)  # columns: tier offsets, each tier's prior weights, each tier's correction
    blocks = []
    for t in range(N_TIERS):
        own = np.zeros((n, N_TIERS * (1 + k + d)))
        own[:, t] = OFFSET_SCALE
        own[:, N_TIERS + t * k:N_TIERS + (t + 1) * k] = logits
        own[:, own_start + t * d:own_start + (t + 1) * d] = apart * scale * x
        blocks.append(np.hstack([own, scale * x]))
    w = LogisticRegression(C=c, max_iter=3000, fit_intercept=False).fit(np.vstack(blocks), ok.T.reshape(-1)).coef_[0]
    shared = w[N_TIERS * (1 + k + d):]
    coef = np.zeros((N_TIERS, d), dtype=np.float32)
    intercept = np.zeros(N_TIERS, dtype=np.float32)
    for t in range(N_TIERS):
        embedding = shared + apart * w[own_start + t * d:own_start + (t + 1) * d]
        if prior is None:
            coef[t], intercept[t] = scale * embedding, OFFSET_SCALE * w[t]
        else:
            folded, bias = prior.fold(np.concatenate([w[N_TIERS + t * k:N_TIERS + (t + 1) * k], embedding]), 0.0, scale)
            coef[t], intercept[t] = folded, OFFSET_SCALE * w[t] + bias
    return coef, intercept


def patch(aparts: tuple[float, ...]) -> None:
    """Make `fitting.fit_head` choose among the shipped grid and the same grid shared at each of `aparts` (by the
    same out-of-fold log loss), and fit the chosen one. Research only: it swaps two module functions."""
    independent_fit = fitting.fit

    def select(x, ok, seed, c=None, prior=None):
        grid = [(value, 1.0, False, a) for value in (fitting.C_GRID if c is None else (c,)) for a in (None, *aparts)]
        if prior is not None:
            grid += [(value, scale, True, a) for value, _, _, a in grid for scale in fitting.PRIOR_SCALES]
        oofs = {}
        for key in grid:
            _chosen["apart"] = key[3]  # what `fit` below fits, in every fold
            oofs[key] = fitting.out_of_fold(x, ok, key[0], seed, prior=prior if key[2] else None, scale=key[1])
        losses = {key: fitting.log_loss(oof, ok) for key, oof in oofs.items()}
        best = min(grid, key=losses.get)
        _chosen["apart"] = best[3]
        print(f"chosen: C={best[0]:g} scale={best[1]:g} prior={best[2]} apart={best[3]}", flush=True)
        return fitting.Selected(best[0], best[1], prior if best[2] else None, oofs[best], losses)

    def fit(x, ok, c, prior=None, scale=1.0):
        apart = _chosen["apart"]
        return independent_fit(x, ok, c, prior, scale) if apart is None else fit_shared(x, ok, c, prior, scale, apart)

    fitting.select, fitting.fit = select, fit


def scores(out: Path, ks, draws) -> dict:
    """(file, K, draw) -> (curve savings@95, shipped savings, shipped quality) on the unseen records."""
    result = {}
    for f, k, d, c in d0022.load_cache(out, ks, draws):
        q, s = d0022.routed(c, d0022.METHODS[d0022.SHIPPED](c))
        result[(f, k, d)] = (savings_at_quality([d0022.routed(c, t) for t in TRADEOFFS], d0022.TARGET) or 0.0, s, q)
    return result


def compare(base: dict, shared: dict) -> str:
    lines = ["| file | K | draws | curve s@95, shared minus independent: mean (per draw) | shipped savings: mean "
             "(per draw) | shipped quality >= 0.95, independent / shared |", "|---|---|---|---|---|---|"]
    for f, k in sorted({key[:2] for key in shared}):
        keys = sorted(key for key in shared if key[:2] == (f, k) and key in base)
        if not keys:
            continue
        dc = np.array([shared[key][0] - base[key][0] for key in keys])
        ds = np.array([shared[key][1] - base[key][1] for key in keys])
        ok_base = sum(base[key][2] >= d0022.TARGET for key in keys)
        ok_shared = sum(shared[key][2] >= d0022.TARGET for key in keys)
        lines.append(f"| {f} | {k} | {len(keys)} | {dc.mean():+.1%} ({' '.join(f'{v:+.0%}' for v in dc)}) | "
                     f"{ds.mean():+.1%} ({' '.join(f'{v:+.0%}' for v in ds)}) | {ok_base} / {ok_shared} |")
    return "\n".join(lines)


def main() -> None:
    ap = d0022.draw_parser(__doc__)
    ap.add_argument("--apart", default="0.5", help="','-separated scales of the tiers' own corrections")
    ap.add_argument("--base", type=Path, default=d0022.OUT, help="decision 0022's output (its cache of the draws)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    ks, draws = [int(k) for k in args.k.split(",")], [int(d) for d in args.draws.split(",")]
    out = args.out / f"apart-{args.apart}"
    if args.fit:
        patch(tuple(float(a) for a in args.apart.split(",")))
        return d0022.fit_cache(ks, draws, out)
    text = compare(scores(args.base, ks, draws), scores(out, ks, draws))
    (out / f"TABLE-k-{'-'.join(map(str, ks))}-draws-{'-'.join(map(str, draws))}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
