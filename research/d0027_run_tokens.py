"""Decision 0027: how many padded tokens should one encoder run hold?

A busy classifier's worker takes what queued (up to `micro_batch` texts), sorts it by length and runs buckets of
similar length (`classifier_service.batching.embed_bucketed`). Batching short texts pays: one run of 16 eleven-token
questions costs far less than 16 runs. Whether it pays for long texts is the question: a run of 32 texts of 150
tokens holds about 4,800 token rows, whose activations no longer fit a core's cache.

In this process, one thread, the texts `make bench` sends under load (the real mixed-length queries of the shared
files, and its unique short questions), taken `take` at a time as a worker takes them from the queue and embedded
by `embed_bucketed` with each cap on a run's padded tokens (`--caps`; 0 = no cap, as before this record), timed by
`bench.local.batched_rate` as `make bench` times its ceiling. The caps alternate within each round, so load on the
machine falls on all of them alike; the table gives the median queries/s over the rounds. `--drift` also compares
each text's embedding inside the capped and uncapped runs with its embedding from a run of its own, as an idle
server embeds it (decision 0009: int8 activations are scaled per run, so batch mates move a text's vector).

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0027_run_tokens [--rounds 5] [--drift]
"""
from __future__ import annotations

import argparse

import numpy as np

from bench import queries
from bench.local import batched_rate
from classifier_service.batching import MAX_PAD_RATIO, embed_bucketed
from classifier_service.encoder import Encoder
from tierwise_tools.paths import ENCODER_DIR


def drift(encoder: Encoder, texts: list[str], take: int, caps: list[int]) -> None:
    alone = encoder.embed(texts)
    print("| cap (padded tokens) | texts whose vector moved (cosine < 0.9999 to its own run) | lowest cosine |\n"
          "|---|---|---|")
    for cap in caps:
        batched = np.vstack([np.vstack([e.vector for e in embed_bucketed(encoder, texts[lo:lo + take], MAX_PAD_RATIO,
                                                                         take, cap or None)])
                             for lo in range(0, len(texts), take)])
        cosine = (batched * alone).sum(axis=1)
        print(f"| {cap or 'none'} | {np.mean(cosine < 0.9999):.1%} | {cosine.min():.5f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="0,1,64,128,192,256,384,512")
    ap.add_argument("--takes", default="6,32", help="texts a worker takes from the queue at once")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mixed", type=int, default=800, help="mixed-length texts per round")
    ap.add_argument("--short", type=int, default=2400, help="short texts per round")
    ap.add_argument("--drift", action="store_true", help="also: how far batch mates move a text's vector")
    args = ap.parse_args()
    caps, takes = [int(v) for v in args.caps.split(",")], [int(v) for v in args.takes.split(",")]
    encoder = Encoder(ENCODER_DIR, "int8", 1)
    sets = queries.build(queries.FULL, 32 * 1024)
    texts = {"mixed": sets.load_mixed[:args.mixed], "short": sets.load_short[:args.short]}
    print(f"mixed: {len(texts['mixed'])} texts ({sets.source}); short: {len(texts['short'])}")
    rates: dict[tuple[str, int, int], list[float]] = {}
    for r in range(args.rounds):
        for name, chosen in texts.items():
            for take in takes:
                for cap in (caps if r % 2 == 0 else caps[::-1]):
                    rates.setdefault((name, take, cap), []).append(
                        batched_rate(encoder, chosen, take, 1, float("inf"), cap or None)["qps"])
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    print("| texts | taken at once | " + " | ".join(f"cap {c or 'none'}" for c in caps) + " |\n|---|---|"
          + "---|" * len(caps))
    for name in texts:
        for take in takes:
            print(f"| {name} | {take} | " + " | ".join(f"{np.median(rates[(name, take, c)]):.0f}" for c in caps) + " |")
    if args.drift:
        drift(encoder, texts["mixed"], 32, [c for c in caps if c != 1])


if __name__ == "__main__":
    main()
