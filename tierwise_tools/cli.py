"""The `tierwise` command: offline tools over the same code the services run."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tierwise.data import DataError, check_measurable, shared_files

ROOT = Path(__file__).resolve().parent.parent


def at_least(kind: type, low: float, strict: bool = False):
    """An argparse type: a number of `kind` that is >= `low` (> `low` when `strict`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{' whole' if kind is int else ''} number: {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {value:g}")
        return value
    return parse


def quality_target(text: str) -> float:
    """--target-quality: a share of always-tier-3 quality, in (0, 1]."""
    value = at_least(float, 0, strict=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be <= 1 (a share of tier 3's quality), got {value:g}")
    return value


def _train(args: argparse.Namespace) -> int:
    from .calibration import ALWAYS_TIER_3
    from .train import train

    data = args.data or shared_files()
    if not data:
        print("tierwise train: no --data given and ../shared/data/routing is absent", file=sys.stderr)
        return 2
    head = train([Path(p) for p in data], args.out / args.name, args.name, args.target_quality, args.c)
    print(f"wrote {args.out / args.name / 'head.json'} version={head.version} tradeoff={head.tradeoff:g}")
    for key in sorted(k for k in head.card if k.startswith("held_out")):
        print(f"  {key}: {head.card[key]}")
    if head.tradeoff == ALWAYS_TIER_3:
        print(f"tierwise train: on {head.card['n_dev']} development records no tradeoff met the {args.target_quality:g} "
              "target with confidence, so this head sends every query to tier 3. Label more queries: on the shared "
              "data, savings at the calibrated point grew until 800-1600 (docs/decisions/0013)", file=sys.stderr)
    return 0


def _data_paths(args: argparse.Namespace, command: str) -> list[Path]:
    data = args.data or shared_files()
    if not data:
        raise SystemExit(f"tierwise {command}: no --data given and ../shared/data/routing is absent")
    return [Path(p) for p in data]


def _records(paths, part: str):
    from tierwise.data import load, split

    records = load(paths)
    return records if part == "all" else split(records)[part == "held-out"]


def _cascade_setup(args: argparse.Namespace) -> None:
    """Sets `args.router`, the --config whose `cascade` section the cascades replay, and `args.live_gate`, which
    runs a gate that asks a model through that config's providers."""
    from router_service.config import load
    from router_service.gates import GATES

    args.router = load(args.config) if args.config else None
    args.live_gate = None
    name = args.gate or (args.router.cascade.gate if args.router else "")
    if args.router and name in GATES and not GATES[name].replayable:
        from .live_gate import LiveGate

        args.live_gate = LiveGate(args.router, name, args.concurrency, args.verdicts)


def _unreplayable_start(name: str) -> str:
    from .evaluate import CASCADE_STARTS

    return f"cascade.start: {name!r} cannot be replayed offline; {', '.join(CASCADE_STARTS[:-1])} and {CASCADE_STARTS[-1]} can"


def _replay(name: str, records, args: argparse.Namespace, tradeoff: float | None = None):
    """`name` replayed on `records`; `tradeoff`: the embedding head's operating point, if not its calibrated one."""
    from router_service.config import CascadeConfig

    from . import evaluate

    if name in evaluate.BASELINES:
        return evaluate.baseline(name, records)
    if name == "cheapest":  # the router's always-tier-1 strategy, a cascade's start
        return evaluate.baseline("always-1", records)
    if name == evaluate.AS_ROUTED:
        return evaluate.as_routed(records)
    if name == "embedding":
        return evaluate.embedding(records, args.target_quality, ROOT / "build" / "encoder", args.heads_dir, args.head,
                                  tradeoff=tradeoff)
    if name == "cascade" or name.endswith("+cascade"):
        # As the router runs them: plain `cascade` starts where `cascade.start` says; the gate is `cascade.gate`.
        defaults = args.router.cascade if args.router else CascadeConfig()
        first = name.removesuffix("cascade").removesuffix("+") or defaults.start
        if first not in evaluate.CASCADE_STARTS:
            raise KeyError(_unreplayable_start(first))
        return evaluate.cascade(records, lambda replayable: _replay(first, replayable, args, defaults.start_tradeoff),
                                args.gate or defaults.gate, name, args.live_gate)
    return getattr(evaluate, name)(records)


def _spent(live) -> None:
    """What a live gate's verifier calls cost, and the answers it could not rule on, on stderr."""
    print(f"{live.gate_name} gate: {live.calls} verifier calls, ${live.spent_usd:.6f}, to judge every recorded "
          "tier 1 and 2 answer; each cascade's cost counts the calls on its own path", file=sys.stderr)
    if live.kept:
        print(f"{live.gate_name} gate: {len(live.kept)} verdicts kept in {live.store} reused", file=sys.stderr)
    if live.unreadable:
        print(f"{live.gate_name} gate: skipped {live.unreadable} line(s) of {live.store} that are not verdicts",
              file=sys.stderr)
    if live.errors:
        print(f"{live.gate_name} gate: the verifier could not rule on {len(live.errors)} answers, counted as "
              f"rejected (first: {live.errors[0]})", file=sys.stderr)


def _eval(args: argparse.Namespace) -> int:
    from router_service.config import ConfigError

    from . import evaluate

    by_file = {p: _records([p], args.split) for p in _data_paths(args, "eval")}  # each file read once
    records = [r for part in by_file.values() for r in part]
    check_measurable(records, f"{' '.join(map(str, by_file))} ({args.split})")
    known = (*evaluate.STRATEGIES, *evaluate.BASELINES, evaluate.AS_ROUTED)
    if args.strategy not in known:
        print(f"tierwise eval: strategy: unknown {args.strategy!r}; one of {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        _cascade_setup(args)
        result = _replay(args.strategy, records, args).result(args.target_quality)
    except KeyError as err:
        print(f"tierwise eval: {err.args[0]}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"tierwise eval: --config: {err}", file=sys.stderr)
        return 2
    if args.report:
        per_file = {}
        for p, part in by_file.items():
            check_measurable(part, f"{p} ({args.split})")
            live = any(r.routed_tier is not None for r in part)
            per_file[str(p)] = {name: _replay(name, part, args).result(args.target_quality)
                                for name in known if live or name != evaluate.AS_ROUTED}
        print(f"wrote {evaluate.report(per_file, args.report)}", file=sys.stderr)
    if args.live_gate is not None:
        _spent(args.live_gate)
    if args.json:
        if result["curve"] is not None:
            result["curve"].pop("points")
        print(json.dumps(result))
    elif result["operating_point"] is None:
        print(f"{result['strategy']}: none of the {result['not_replayable']} records is replayable ({result['why']})")
    else:
        op, curve = result["operating_point"], result["curve"]
        print(f"{result['strategy']} on {result['n']} records ({result['not_replayable']} not replayable)")
        for key in ("accuracy", "cost_savings", "quality_preserved", "answer_quality", "quality_vs_frontier"):
            print(f"  {key:22} {op[key]:.4f}")
        if "quality_vs_frontier_lower_bound" in result:
            print(f"  {'  95% lower bound':22} {result['quality_vs_frontier_lower_bound']:.4f}")
        print(f"  {'tier_mix':22} {' / '.join(f'{t:.3f}' for t in op['tier_mix'])}")
        for q, v in curve["savings_at_quality"].items():
            print(f"  savings@{q}Q (curve)   {'none' if v is None else f'{v:.4f}'}")
        print(f"  {'aiq':22} {curve['aiq']:.4f}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    if args.config:
        return _calibrate_cascade(args)

    from .calibration import calibrate
    from classifier_service.encoder import Encoder
    from classifier_service.heads import HeadRegistry
    from .embeddings import embed_records

    records = _records(_data_paths(args, "calibrate"), "all" if args.include_held_out else "dev")
    head = HeadRegistry.from_dir(args.heads_dir).get(args.head)
    if head is None:
        print(f"tierwise calibrate: head: unknown head {args.head!r}", file=sys.stderr)
        return 2
    encoder = Encoder(ROOT / "build" / "encoder", "int8", threads=2)
    probs = head.probabilities(embed_records(encoder, records, ROOT / "build" / "embeddings"))
    tradeoff, facts = calibrate(records, probs, head.relative_cost, args.target_quality)
    key = f"{args.target_quality:g}"
    calibration = {**head.calibration, key: tradeoff}
    card = {**head.card, f"calibration_{key}": f"{tradeoff:g} on {len(records)} records, {time.strftime('%Y-%m-%d')}: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items())}
    updated = dataclasses.replace(
        head, calibration=calibration, card=card,
        tradeoff=tradeoff if args.target_quality == head.target_quality else head.tradeoff,
    ).versioned(time.strftime("%Y-%m-%d"))
    updated.publish(args.heads_dir / head.name)
    print(f"{head.name}: quality {key} -> tradeoff {tradeoff:g} ({facts}); version {updated.version}")
    return 0


def _calibrate_cascade(args: argparse.Namespace) -> int:
    """The cheapest verifier bar, and for an embedding start the tradeoff it starts at, with which the config's
    cascade meets the target under the same confidence bound as a head's tradeoff (docs/decisions/0017)."""
    from .calibration import TRADEOFFS, cheapest_meeting
    from router_service.config import ConfigError

    from . import evaluate

    records = _records(_data_paths(args, "calibrate"), "all" if args.include_held_out else "dev")
    check_measurable(records, "calibration records")
    args.gate = ""  # the config's
    try:
        _cascade_setup(args)
    except ConfigError as err:
        print(f"tierwise calibrate: --config: {err}", file=sys.stderr)
        return 2
    cascade = args.router.cascade
    if args.live_gate is None:
        print(f"tierwise calibrate: --config: cascade.gate {cascade.gate!r} has no bar to calibrate; the verify "
              "gate has one", file=sys.stderr)
        return 2
    if cascade.start not in evaluate.CASCADE_STARTS:
        print(f"tierwise calibrate: --config: {_unreplayable_start(cascade.start)}", file=sys.stderr)
        return 2
    answers = evaluate.gated(records, args.live_gate.gate_name, args.live_gate)
    _spent(args.live_gate)
    if isinstance(answers, str):
        print(f"tierwise calibrate: --data: nothing to replay: {answers}", file=sys.stderr)
        return 2
    args.head = args.router.classifier.head  # the start decides as the router's would
    start = _replay(cascade.start, answers.records, args)
    starts = (list(zip(map(float, TRADEOFFS), (o.tiers for o in start.sweep))) if cascade.start == "embedding"
              else [(None, start.operating_point.tiers)])
    candidates = [((tradeoff, bar), o.tiers, o.paid) for tradeoff, first in starts
                  for bar in evaluate.bars(answers.scores) for o in [answers.run(first, bar)]]
    (tradeoff, bar), facts = cheapest_meeting(answers.records, candidates, args.target_quality, (None, None))
    print(f"verifier on {len(answers.records)} records: {answers.detail['verifier']}")
    if bar is None or bar > 1:
        print(f"cascade from {cascade.start}: {'no setting meets' if bar is None else 'only escalating every answer meets'} "
              f"{args.target_quality:g} quality vs frontier with 95% confidence; the verifier buys nothing here ({facts})")
        return 1
    settings = f"cascade.verifier_bar: {bar:.6g}" + ("" if tradeoff is None else f", cascade.start_tradeoff: {tradeoff:.6g}")
    print(f"cascade from {cascade.start}: {settings} meet {args.target_quality:g} "
          f"({', '.join(f'{k}={v:.4f}' for k, v in facts.items())}); set them in {args.config}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from .promote import promote

    records = _records(_data_paths(args, "promote"), args.split)
    try:
        result = promote(args.candidate, records, args.heads_dir, args.target_quality, ROOT / "build" / "encoder",
                         ROOT / "build" / "embeddings", args.dry_run)
    except KeyError as err:  # the candidate has no tradeoff for this target
        print(f"tierwise promote: {err.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for role in ("candidate", "serving"):
            m = result[role]
            if m is not None:
                print(f"{role:9} {m['version']}: quality vs frontier {m['quality_vs_frontier']:.4f} "
                      f"(95% lower bound {m['quality_vs_frontier_lower_bound']:.4f}), savings {m['cost_savings']:.1%}, "
                      f"tier mix {' / '.join(f'{t:.3f}' for t in m['tier_mix'])}")
        outcome = "promoted" if result["promoted"] else "would promote (dry run)" if result["passed"] else "refused"
        print(f"{outcome} on {result['n']} records ({args.split}): {result['why']}"
              + (f"; installed to {result['installed_to']}" if result["promoted"] else ""))
        serving, candidate = result["serving"], result["candidate"]
        if result["passed"] and (serving is None or serving["head"] != candidate["head"]):
            found_by = (f"routers naming no head use it when their tiers' first models are "
                        f"{' / '.join(candidate['models'])}; others " if candidate["models"] else "routers use it ")
            print(f"a new head: {found_by}once their config says classifier.head: {candidate['head']}")
    return 0 if result["passed"] else 3


def _costs(args: argparse.Namespace) -> int:
    from router_service.config import ConfigError, load

    from . import costs

    try:
        cfg = load(args.config)
        rows = [(f"mix {args.mix}", costs.parse_mix(args.mix), None)] if args.mix else []
        rows += [costs.from_eval(p) for p in args.from_eval or ()]
    except (ConfigError, ValueError, OSError, KeyError) as err:
        print(f"tierwise costs: {err}", file=sys.stderr)
        return 2
    print(costs.table(cfg, args.queries_per_month, rows, args.input_tokens,
                      args.output_tokens or cfg.expected_output_tokens), end="")
    return 0


def _label(args: argparse.Namespace) -> int:
    import asyncio

    from router_service.config import ConfigError, load

    from .label import label, read_queries

    try:
        cfg = load(args.config)
        queries = read_queries(args.queries, args.source)
    except (ConfigError, ValueError, OSError) as err:
        print(f"tierwise label: {err}", file=sys.stderr)
        return 2
    summary = asyncio.run(label(cfg, queries, args.out, args.source, args.judge_tier, args.rate, args.concurrency))
    for failure in summary["failed"]:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{summary['labelled']} labelled, {summary['already_done']} already in {args.out}, "
          f"{len(summary['failed'])} failed (re-run to retry them); this run's labels cost ${summary['cost_usd']:.4f}")
    return 1 if summary["failed"] else 0


def _client(args: argparse.Namespace):
    from tierwise.client import ClientOptions, RouterClient

    return RouterClient(args.address, ClientOptions(timeout_s=args.timeout, api_key=os.environ.get("TIERWISE_API_KEY"),
                                                    tls=args.tls))


def _route(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as tw:
        reply = tw.route(args.query, strategy=args.strategy)
    print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
    return 0


def _complete(args: argparse.Namespace) -> int:
    with _client(args) as tw:
        for piece in tw.stream(args.prompt, strategy=args.strategy, max_tokens=args.max_tokens):
            print(piece, end="", flush=True)
        s = tw.last_summary
    print()
    if s is not None:
        print(f"[tier {s.tier} {s.provider}/{s.model} strategy={s.strategy}{' degraded' if s.degraded else ''} "
              f"tokens={s.usage.input_tokens}+{s.usage.output_tokens} cost=${s.cost_usd:.6f} "
              f"escalations={s.escalations}]", file=sys.stderr)
    return 0


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("TIERWISE_ROUTER_ADDRESS", "127.0.0.1:50052"),
                   help="router host:port (env TIERWISE_ROUTER_ADDRESS)")
    p.add_argument("--strategy", default="", help="routing strategy (default: the router's)")
    p.add_argument("--timeout", type=at_least(float, 0, strict=True), default=60.0, help="deadline in seconds")
    p.add_argument("--tls", action="store_true", help="use TLS (API key from TIERWISE_API_KEY)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tierwise")
    sub = ap.add_subparsers(dest="command", required=True)
    ro = sub.add_parser("route", help="ask the router which tier a query needs")
    ro.add_argument("query")
    _add_client_flags(ro)
    ro.set_defaults(run=_route)
    co = sub.add_parser("complete", help="answer a prompt through the router, streaming")
    co.add_argument("prompt")
    co.add_argument("--max-tokens", type=at_least(int, 0), default=0)
    _add_client_flags(co)
    co.set_defaults(run=_complete)
    tr = sub.add_parser("train", help="fit the tier head the classifier serves")
    tr.add_argument("--data", nargs="+", help="routing records (default: ../shared/data/routing/*.dev.jsonl)")
    tr.add_argument("--out", type=Path, default=ROOT / "models" / "heads")
    tr.add_argument("--name", default="default")
    tr.add_argument("--target-quality", type=quality_target, default=0.95)
    tr.add_argument("--c", type=at_least(float, 0, strict=True), help="inverse L2 regularisation strength (default: chosen by cross-validation)")
    tr.set_defaults(run=_train)
    ev = sub.add_parser("eval", help="replay strategies offline on benchmark records")
    ev.add_argument("--data", nargs="+", help="routing records (default: ../shared/data/routing/*.dev.jsonl)")
    ev.add_argument("--strategy", default="embedding", help="heuristic, embedding (default), cascade, embedding+cascade, a baseline, or "
                    "as-routed (the live router's decisions, on records its shadow labelled)")
    ev.add_argument("--target-quality", type=quality_target, default=0.95)
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.add_argument("--report", type=Path, help="write Markdown + PNG curves for every strategy and baseline here")
    ev.add_argument("--split", choices=("all", "held-out", "dev"), default="all",
                    help="held-out: only the fifth of each file (by id hash) that training never sees")
    ev.add_argument("--head", default="",
                    help="classifier head (default: the head trained on the records' tier lineup, else the default head)")
    ev.add_argument("--heads-dir", type=Path, default=ROOT / "models" / "heads")
    ev.add_argument("--gate", default="", help="quality gate the cascades run (default: the router's, cascade.gate)")
    ev.add_argument("--config", type=Path, help="router config: the cascades run as it says (cascade.start, "
                    "cascade.gate), and a gate that asks a model (verify) calls its providers, live and paid")
    ev.add_argument("--concurrency", type=at_least(int, 1), default=4, help="verifier calls in flight with --config")
    ev.add_argument("--verdicts", type=Path, help="keep the verifier's verdicts in this JSONL file and reuse them: "
                    "an interrupted run resumes, and calibrate then eval pay once")
    ev.set_defaults(run=_eval)
    ca = sub.add_parser("calibrate", help="choose a head's tradeoff (or, with --config, a verifier's bar) for a "
                        "quality target, with a confidence bound")
    ca.add_argument("--data", nargs="+", help="routing records (default: ../shared/data/routing/*.dev.jsonl)")
    ca.add_argument("--target-quality", type=quality_target, default=0.95)
    ca.add_argument("--head", default="default")
    ca.add_argument("--heads-dir", type=Path, default=ROOT / "models" / "heads")
    ca.add_argument("--include-held-out", action="store_true",
                    help="also use the held-out fifth (by default it is never calibrated on)")
    ca.add_argument("--config", type=Path, help="router config whose verify gate's bar (cascade.verifier_bar) to "
                    "calibrate instead of a head: its verifier judges the records' answers, live and paid")
    ca.add_argument("--concurrency", type=at_least(int, 1), default=4, help="verifier calls in flight with --config")
    ca.add_argument("--verdicts", type=Path, help="as eval --verdicts")
    ca.set_defaults(run=_calibrate)
    pr = sub.add_parser("promote", help="check a trained head on records it never saw; install it if it holds the target")
    pr.add_argument("--candidate", type=Path, required=True, help="directory with the candidate's head.json (`train --out`)")
    pr.add_argument("--data", nargs="+", help="labelled routing records, e.g. from shadow.labels (default: ../shared/data/routing/*.dev.jsonl)")
    pr.add_argument("--split", choices=("all", "held-out"), default="held-out",
                    help="held-out (default): the fifth `train` never fits on, for a candidate trained on the same files")
    pr.add_argument("--target-quality", type=quality_target, default=0.95)
    pr.add_argument("--heads-dir", type=Path, default=ROOT / "models" / "heads", help="the directory the classifier serves")
    pr.add_argument("--dry-run", action="store_true", help="check only; install nothing")
    pr.add_argument("--json", action="store_true", help="print exactly one JSON object")
    pr.set_defaults(run=_promote)
    cs = sub.add_parser("costs", help="monthly cost table at the configured prices")
    cs.add_argument("--queries-per-month", type=at_least(int, 0), required=True)
    cs.add_argument("--mix", help="a tier mix in percent, e.g. 60/25/15")
    cs.add_argument("--from-eval", nargs="+", type=Path, help="JSON written by `tierwise eval --json`")
    cs.add_argument("--config", default=str(ROOT / "tierwise.example.yaml"))
    cs.add_argument("--input-tokens", type=at_least(int, 0), default=400)
    cs.add_argument("--output-tokens", type=at_least(int, 0), default=0, help="default: the config's expected_output_tokens")
    cs.set_defaults(run=_costs)
    la = sub.add_parser("label", help="label queries by asking every tier and judging against tier 3")
    la.add_argument("--queries", type=Path, required=True, help="JSON lines with \"query\" (or plain lines)")
    la.add_argument("--config", required=True, help="router YAML: the tiers' providers and prices")
    la.add_argument("--out", type=Path, default=Path("labelled.jsonl"), help="records are appended here (resumable)")
    la.add_argument("--source", default="label", help="the records' source name")
    la.add_argument("--judge-tier", type=int, default=1, choices=(1, 2, 3))
    la.add_argument("--rate", type=at_least(float, 0, strict=True), default=2.0, help="provider calls started per second, at most")
    la.add_argument("--concurrency", type=at_least(int, 1), default=4, help="queries in flight")
    la.set_defaults(run=_label)
    args = ap.parse_args(argv)
    try:
        return args.run(args)
    except DataError as err:
        print(f"tierwise {args.command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written: say which, not a traceback
        print(f"tierwise {args.command}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a gRPC error: print its status, not a traceback
        import grpc

        if isinstance(err, grpc.RpcError):
            print(f"tierwise {args.command}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
