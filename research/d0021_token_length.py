"""Decision 0021: routing quality and encoder time against the tokens a text keeps (32 / 64 / 128 / 256).

For each shared dev file (one tier lineup each), every record is embedded with the encoder cut at N tokens (one
run per text, as `tierwise train` embeds), a head is fitted on the development records with `tierwise train`'s
own fitting (`fit_head`, support included) and scored on the held-out fifth it never trained, calibrated or was
selected on: the curve's savings at 95% quality vs the frontier and the shipped point (quality, savings). The
noise band is a paired bootstrap over the held-out records (the same resample scores both lengths): the 5-95%
range of (savings@95 at N) - (savings@95 at 256). The encoder's time per query at each N is the p50 of one run
per text over the held-out queries, in this process, one ORT thread.

    .venv/bin/python -m research.d0021_token_length [--tokens 32,64,128,256] [--resamples 200]

256 is the export's limit and what the service ships; its embeddings come from the cache `make train` fills.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from classifier_service.encoder import Encoder
from classifier_service.heads import decide, success
from tierwise.data import arrays, load, shared_files
from tierwise.metrics import poisson_weights, resampled_quality_vs_frontier, routing_metrics, savings_at_quality
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.fitting import fit_head
from tierwise_tools.paths import ENCODER_DIR

from .common import embed

TARGET = 0.95


def embedded(records, tokens: int) -> tuple[np.ndarray, float, float]:
    """(embeddings, p50 ms per query, share of texts cut) with the encoder cut at `tokens`."""
    encoder = Encoder(ENCODER_DIR, "int8", 1, max_tokens=tokens)
    texts = [r.query for r in records]
    cut = float(np.mean([t.truncated for t in encoder.tokenize(texts)]))
    if tokens == encoder.manifest["max_tokens"]:
        x = embed(records)
    else:
        x = encoder.embed(texts)
    times = []
    for text in texts[:400]:
        t0 = time.perf_counter()
        encoder.embed_tokens(encoder.tokenize([text]))
        times.append((time.perf_counter() - t0) * 1000)
    return x, float(np.median(times)), cut


def routes(fitted, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tiers at the shipped point, (n, tradeoffs) tiers over the sweep), support check on throughout."""
    p, outside = success(x, fitted.coef, fitted.intercept), fitted.support.outside(x)
    shipped = decide(p, fitted.relative_cost, fitted.calibration[f"{TARGET:g}"], outside)
    return shipped, np.stack([decide(p, fitted.relative_cost, t, outside) for t in TRADEOFFS], axis=1)


def curve_savings(records, sweep: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Savings@95 of the sweep's curve in each resample (rows of bootstrap `weights`; a row of ones: the
    records themselves)."""
    ok, cost = arrays(records)
    ok = ok.astype(np.float64)
    rows = np.arange(len(records))[:, None]
    quality = resampled_quality_vs_frontier(weights, ok[rows, sweep - 1], (weights @ ok[:, 2])[:, None])
    savings = 1 - (weights @ cost[rows, sweep - 1]) / (weights @ cost[:, 2])[:, None]
    return np.array([savings_at_quality(zip(q, s), TARGET) or 0.0 for q, s in zip(quality, savings)])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0021_token_length", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="32,64,128,256")
    ap.add_argument("--resamples", type=int, default=200)
    args = ap.parse_args()
    lengths = sorted({int(t) for t in args.tokens.split(",")} | {256})
    print("| file | tokens | texts cut | encoder p50 ms | held-out savings@95 | vs 256 (5-95% band) | "
          "shipped quality | shipped savings |")
    print("|---|---|---|---|---|---|---|---|")
    for path in shared_files():
        records = load([path])
        held = np.array([r.held_out for r in records])
        dev_records = [r for r, h in zip(records, held) if not h]
        test = [r for r, h in zip(records, held) if h]
        results = {}
        for tokens in lengths:
            x, ms, cut = embedded(records, tokens)
            fitted = fit_head(dev_records, x[~held], [TARGET])
            shipped, sweep = routes(fitted, x[held])
            results[tokens] = (sweep, ms, cut, routing_metrics(test, shipped))
        weights = poisson_weights(len(test), len(test), args.resamples)
        full = curve_savings(test, results[256][0], weights)
        for tokens in lengths:
            sweep, ms, cut, point = results[tokens]
            diffs = curve_savings(test, sweep, weights) - full
            band = "—" if tokens == 256 else \
                f"{np.median(diffs):+.1%} ({np.quantile(diffs, 0.05):+.1%} to {np.quantile(diffs, 0.95):+.1%})"
            print(f"| {path.name.split('.')[0]} (n={len(test)}) | {tokens} | {cut:.0%} | {ms:.2f} | "
                  f"{curve_savings(test, sweep, np.ones((1, len(test))))[0]:.1%} | {band} | "
                  f"{point['quality_vs_frontier']:.3f} | {point['cost_savings']:.1%} |", flush=True)

if __name__ == "__main__":
    main()
