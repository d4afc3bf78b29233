"""Decision 0023: a static-token-embedding encoder distilled from the project's own MiniLM, against MiniLM.

Distillation (model2vec's recipe, written here): every vocabulary token is run through the exported ONNX
all-MiniLM-L6-v2 as `[CLS] token [SEP]` (batched, one ORT thread) and its output kept: the mean over the three
positions (variant `mean`) or the token's own position (`token`). Optionally the table is reduced by PCA
(`+pca256`) and each row scaled by log(1 + its id), the vocabulary's rank standing in for Zipf frequency
(`+zipf`). A text embeds as the L2-normalised mean of its tokens' rows ([CLS], [SEP] and [PAD] dropped, no cut):
numpy and the encoder's tokenizer only, no torch, no download. The tables are cached under build/research/d0023/.

Quality: d0021's protocol. For each shared dev file, a head is fitted with `tierwise train`'s own fitting
(`fit_head`, support included) on the development records' embeddings from each encoder and scored on the
held-out fifth it never trained, calibrated or was selected on: savings@95 of the tradeoff sweep and the
shipped point. The bands are a paired bootstrap over the held-out records (200 resamples): the 5-95% range of
static minus MiniLM, for savings@95 and for the shipped point's quality. MiniLM's embeddings are the int8 cache `make train` fills.

`--crossfit` also scores every development fifth, each by a head fitted on the other three (the held-out fifth
never trains anything), for narrower bands. `--support`: how much of its own file's and of the other files'
held-out queries a head's support leaves outside (decision 0008's guard). `--unseen`: decision 0008's
leave-one-task-out routing, with and without the support check; with `--lexical`, also the static heads checked
by a support fitted on hashed bags of token ids instead (`lexical`), alone and together with their own. `--speed N`: both encoders in this
process on the same N held-out queries, alternating in rounds: single-query p50 (tokenise + embed one text) and
batched throughput (batches of 32; MiniLM length-bucketed by the server's own `embed_bucketed`), one thread.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0023_static_encoder [--crossfit | --support | --unseen [--lexical] | --speed 600]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from classifier_service.batching import embed_bucketed
from classifier_service.encoder import PRECISIONS, Encoder
from tierwise.data import TEST_SHARE, arrays, fifth, load, shared_files
from tierwise.metrics import poisson_weights, resampled_quality_vs_frontier, routing_metrics
from tierwise.tiers import FRONTIER
from tierwise_tools.fitting import fit_head, fit_support, route_unseen
from tierwise_tools.paths import ENCODER_DIR

from .common import embed
from .d0021_token_length import TARGET, curve_savings, routes

CACHE = Path("build/research/d0023")
DROPPED = (0, 101, 102)  # [PAD] [CLS] [SEP]: never averaged into a text


def distil(precision: str, pool: str, batch: int = 512) -> np.ndarray:
    """(vocab, 384) float32: MiniLM's output on `[CLS] token [SEP]` for every token id."""
    path = CACHE / f"table-{precision}-{pool}.npy"
    if path.exists():
        return np.load(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(ENCODER_DIR / PRECISIONS[precision]), opts,
                                   providers=["CPUExecutionProvider"])
    vocab = Tokenizer.from_file(str(ENCODER_DIR / "tokenizer.json")).get_vocab_size()
    out = np.empty((vocab, 384), dtype=np.float32)
    started = time.perf_counter()
    for lo in range(0, vocab, batch):
        ids = np.arange(lo, min(lo + batch, vocab))
        seq = np.stack([np.full_like(ids, 101), ids, np.full_like(ids, 102)], axis=1).astype(np.int64)
        tokens, sentence = session.run(["token_embeddings", "sentence_embedding"],
                                       {"input_ids": seq, "attention_mask": np.ones_like(seq)})
        out[ids] = sentence if pool == "mean" else tokens[:, 1]
    print(f"distilled {vocab} tokens ({precision}, {pool}) in {time.perf_counter() - started:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def reduce(table: np.ndarray, pca: int | None, zipf: bool) -> np.ndarray:
    if pca:
        centred = table - table.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        table = centred @ vt[:pca].T
    if zipf:
        table = table * np.log1p(np.arange(len(table)))[:, None]
    return table.astype(np.float32)


class StaticEncoder:
    """Texts to L2-normalised means of static token vectors, with the encoder's own tokenizer (no cut)."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self._tokenizer = Tokenizer.from_file(str(ENCODER_DIR / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def embed(self, texts: list[str]) -> np.ndarray:
        ids = [np.asarray([i for i in e.ids if i not in DROPPED], dtype=np.int64)
               for e in self._tokenizer.encode_batch(texts)]
        lengths = np.array([len(i) for i in ids])
        flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        sums = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        nonempty = lengths > 0
        if nonempty.any():
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
            sums[nonempty] = np.add.reduceat(self.table[flat], starts, axis=0)
        return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def lexical(texts: list[str], dimension: int = 4096, seed: int = 7) -> np.ndarray:
    """Unit bags of each text's distinct token ids, hashed into `dimension` signed buckets and weighted by
    log(1 + id) (rarer tokens weigh more): a support check on vocabulary rather than on a mean of token vectors."""
    tokenizer = Tokenizer.from_file(str(ENCODER_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    vocab = tokenizer.get_vocab_size()
    rng = np.random.default_rng(seed)
    bucket, sign = rng.integers(0, dimension, vocab), rng.choice([-1.0, 1.0], vocab) * np.log1p(np.arange(vocab))
    out = np.zeros((len(texts), dimension), dtype=np.float32)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        ids = np.setdiff1d(encoding.ids, DROPPED)
        np.add.at(out[row], bucket[ids], sign[ids])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def speed(encoders: dict, texts: list[str], rounds: int, batch: int = 32, seconds: float = 2.0) -> None:
    """Single-query p50 (tokenise + embed one text) and batched queries/s (batches of `batch`) of each
    encoder on the same `texts`, the encoders alternating in `rounds` rounds so that load on the machine
    falls on all of them alike."""
    single: dict[str, list[float]] = {name: [] for name in encoders}
    rate: dict[str, list[float]] = {name: [] for name in encoders}
    block = max(1, len(texts) // rounds)
    for r in range(rounds):
        for name, (one, many) in encoders.items():
            for text in texts[r * block:(r + 1) * block]:
                t0 = time.perf_counter()
                one(text)
                single[name].append((time.perf_counter() - t0) * 1000)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                lo = done % len(texts)
                chunk = texts[lo:lo + batch]
                many(chunk)
                done += len(chunk)
            rate[name].append(done / (time.perf_counter() - started))
    print("| encoder | single-query p50 ms | p90 ms | batched q/s (median of rounds) |\n|---|---|---|---|")
    for name in encoders:
        print(f"| {name} | {np.median(single[name]):.3f} | {np.quantile(single[name], 0.9):.3f} | "
              f"{np.median(rate[name]):.0f} |")


def variant(spec: str, precision: str) -> np.ndarray:
    """'mean', 'token', optionally '+pcaD' and '+zipf': the table that variant averages."""
    parts = spec.split("+")
    pca = next((int(p[3:]) for p in parts if p.startswith("pca")), None)
    return reduce(distil(precision, parts[0]), pca, "zipf" in parts)


def shipped_quality(records, shipped: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Quality vs frontier of the shipped point in each resample (rows of `weights`)."""
    ok = arrays(records)[0].astype(np.float64)
    chosen = ok[np.arange(len(records)), shipped - 1][:, None]
    return resampled_quality_vs_frontier(weights, chosen, (weights @ ok[:, 2])[:, None])[:, 0]


def band(diffs: np.ndarray, fmt: str) -> str:
    q = np.quantile(diffs, [0.5, 0.05, 0.95])
    return f"{q[0]:{fmt}} ({q[1]:{fmt}} to {q[2]:{fmt}})"


def scored(records, x: np.ndarray, folds: np.ndarray, test_folds) -> tuple[np.ndarray, ...]:
    """(rows, shipped tiers, sweep tiers, outside the head's support) over the records of `test_folds`, each scored by a head fitted
    (`fit_head`, calibration and support included) on the records of every other fold but 0's."""
    rows, shipped, sweep, outside = [], [], [], []
    for k in test_folds:
        train = (folds != k) & (folds != 0) if k else folds != 0
        fitted = fit_head([r for r, t in zip(records, train) if t], x[train], [TARGET])
        test = np.flatnonzero(folds == k)
        point, curve = routes(fitted, x[test])
        rows.append(test), shipped.append(point), sweep.append(curve), outside.append(fitted.support.outside(x[test]))
    return tuple(np.concatenate(a) for a in (rows, shipped, sweep, outside))


def support(statics: dict, with_lexical: bool = False) -> None:
    """Share of held-out queries outside a head's support: its own file's (in distribution) and the other
    files' (tasks and prompts it never saw; decision 0008's check), per encoder; with `with_lexical`, also a
    support fitted on `lexical` bags alone."""
    files = {path.name.split(".")[0]: load([path]) for path in shared_files()}
    embedded = {}
    for name, records in files.items():
        embedded[name] = {"MiniLM int8": embed(records)}
        embedded[name].update({f"static {spec}": enc.embed([r.query for r in records]) for spec, enc in statics.items()})
        if with_lexical:
            embedded[name]["lexical support"] = lexical([r.query for r in records])
    print("| head fitted on | encoder | own held-out outside | other files' held-out outside |\n|---|---|---|---|")
    for name, records in files.items():
        held = np.array([r.held_out for r in records])
        for encoder, x in embedded[name].items():
            fitted = (fit_support(x[~held]) if encoder == "lexical support" else
                      fit_head([r for r, h in zip(records, held) if not h], x[~held], [TARGET]).support)
            others = np.concatenate([embedded[o][encoder][[r.held_out for r in files[o]]] for o in files if o != name])
            print(f"| {name} | {encoder} | {np.mean(fitted.outside(x[held])):.1%} | "
                  f"{np.mean(fitted.outside(others)):.1%} |", flush=True)


def unseen(statics: dict, resamples: int, with_lexical: bool = False) -> None:
    """Decision 0008's first check for each encoder: every task of a file left out in turn, a head fitted and
    calibrated (`route_unseen`, as `train` does) on the file's other tasks' development records routes it. With
    `with_lexical`, each static head is also checked by a support fitted on `lexical` bags of the same records,
    and by either support."""
    print("| file | encoder | unseen tasks outside support | quality / savings, no check | with the check | "
          "with the check vs MiniLM (5-95% band) | tasks under 0.95 with the check (worst; share outside) |\n"
          "|---|---|---|---|---|---|---|")
    for path in shared_files():
        records = load([path])
        dev = np.array([not r.held_out for r in records])
        task = np.array([r.task for r in records])
        bags = lexical([r.query for r in records]) if with_lexical else None
        embedded = {"MiniLM int8": embed(records)}
        embedded.update({f"static {spec}": enc.embed([r.query for r in records]) for spec, enc in statics.items()})
        routings: dict[str, list] = {}
        for left_out in sorted(set(task)):
            train, test = np.flatnonzero(dev & (task != left_out)), np.flatnonzero(task == left_out)
            for name, x in embedded.items():
                plain, checked, outside = route_unseen([records[i] for i in train], x[train], x[test])
                checks = {name: outside}
                if bags is not None and name.startswith("static"):
                    by_words = fit_support(bags[train]).outside(bags[test])
                    checks.update({f"{name}, lexical support": by_words, f"{name}, either support": by_words | outside})
                for label, out in checks.items():
                    routings.setdefault(label, []).append((left_out, test, plain, np.where(out, FRONTIER, plain), out))
        base = None
        for name, parts in routings.items():
            rows, plain, checked, outside = (np.concatenate([p[i] for p in parts]) for i in range(1, 5))
            worst = sorted((routing_metrics([records[i] for i in p[1]], p[3])["quality_vs_frontier"], p[0],
                            p[4].mean()) for p in parts)
            part = [records[i] for i in rows]
            quality = shipped_quality(part, checked, poisson_weights(len(part), len(part), resamples))
            base = quality if base is None else base
            under = [w for w in worst if w[0] < 0.95]
            m0, m1 = routing_metrics(part, plain), routing_metrics(part, checked)
            print(f"| {path.name.split('.')[0]} ({len(set(task))} tasks) | {name} | {np.mean(outside):.1%} | "
                  f"{m0['quality_vs_frontier']:.3f} / {m0['cost_savings']:.1%} | "
                  f"{m1['quality_vs_frontier']:.3f} / {m1['cost_savings']:.1%} | "
                  f"{'—' if quality is base else band(quality - base, '+.3f')} | "
                  f"{len(under)} ({', '.join(f'{t} {q:.3f}; {o:.0%}' for q, t, o in under[:3])}) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0023_static_encoder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="mean,mean+pca256+zipf,token+pca256+zipf")
    ap.add_argument("--teacher", default="fp32", choices=sorted(PRECISIONS))
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--crossfit", action="store_true",
                    help="score every dev fifth too (heads fitted on the other dev fifths), not only the held-out one")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="instead: time the encoders on N held-out queries drawn from every file")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--unseen", action="store_true",
                    help="instead: decision 0008's unseen-task check (each task left out in turn) for each encoder")
    ap.add_argument("--lexical", action="store_true",
                    help="with --unseen or --support: also check the static heads by a support on hashed bags of token ids")
    ap.add_argument("--support", action="store_true",
                    help="instead: how much of its own and of the other files' held-out queries a head's support leaves outside")
    args = ap.parse_args()
    statics = {spec: StaticEncoder(variant(spec, args.teacher)) for spec in args.variants.split(",")}
    minilm = Encoder(ENCODER_DIR, "int8", 1)
    if args.support:
        return support(statics, args.lexical)
    if args.unseen:
        return unseen(statics, args.resamples, args.lexical)
    if args.speed:
        queries = [r.query for r in load(shared_files()) if r.held_out]
        queries = [queries[i] for i in np.random.default_rng(0).permutation(len(queries))[:args.speed]]
        tokens = np.mean([len(t) for t in minilm.tokenize(queries)])
        print(f"{len(queries)} held-out queries, {tokens:.0f} tokens on average (MiniLM's cut at 256)")
        encoders = {"MiniLM int8": (lambda t: minilm.embed_tokens(minilm.tokenize([t])),
                                    lambda b: embed_bucketed(minilm, b, 1.25, 32))}
        encoders.update({f"static {spec}": (lambda t, e=enc: e.embed([t]), enc.embed) for spec, enc in statics.items()})
        speed(encoders, queries, args.rounds)
        return
    print("| file | encoder | savings@95 | vs MiniLM (5-95% band) | shipped quality / savings | "
          "quality vs MiniLM (5-95% band) | outside support |")
    print("|---|---|---|---|---|---|---|")
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in shared_files():
        records = load([path])
        folds = np.array([fifth(r.id) for r in records])
        embedded = {"MiniLM int8": embed(records)}
        embedded.update({f"static {spec}": enc.embed([r.query for r in records]) for spec, enc in statics.items()})
        base = None
        for name, x in embedded.items():
            rows, shipped, sweep, outside = scored(records, x, folds, range(TEST_SHARE) if args.crossfit else [0])
            test = [records[i] for i in rows]
            weights = poisson_weights(len(test), len(test), args.resamples)
            point = routing_metrics(test, shipped)
            resampled = (curve_savings(test, sweep, weights), shipped_quality(test, shipped, weights))
            base = resampled if base is None else base
            diffs = (resampled[0] - base[0], resampled[1] - base[1])
            pooled.setdefault(name, []).append(diffs)
            first = resampled is base
            print(f"| {path.name.split('.')[0]} (n={len(test)}) | {name} | "
                  f"{curve_savings(test, sweep, np.ones((1, len(test))))[0]:.1%} | "
                  f"{'—' if first else band(diffs[0], '+.1%')} | "
                  f"{point['quality_vs_frontier']:.3f} / {point['cost_savings']:.1%} | "
                  f"{'—' if first else band(diffs[1], '+.3f')} | {np.mean(outside):.1%} |", flush=True)
    for name, diffs in list(pooled.items())[1:]:
        # the files' resamples are independent: average them draw by draw
        savings, quality = (np.mean([d[i] for d in diffs], axis=0) for i in (0, 1))
        print(f"| mean of the three files | {name} | | {band(savings, '+.1%')} | | {band(quality, '+.3f')} | |")


if __name__ == "__main__":
    main()
