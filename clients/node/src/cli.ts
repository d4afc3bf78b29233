#!/usr/bin/env node
// tierwise-example: the example CLI over RouterClient. Route, then CompleteStream, one JSON line per call on stdout.
//
//   tierwise-example [--address HOST:PORT] [--strategy NAME] [--head NAME] [--quality-target Q] [--timeout SECONDS] QUERY...
//
// When TRACEPARENT holds a W3C trace context it is sent as `traceparent` metadata (and TRACESTATE as
// `tracestate`), so the router's and classifier's spans join the caller's trace.
import type { ServiceError } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";

import { CompleteResponse, MAX_TIMEOUT_S, RouteResponse, RouterClient, traceparentFromEnv } from "./index";

interface Args {
  address: string;
  strategy: string;
  head: string;
  qualityTarget?: number;
  timeoutS: number;
  query: string;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    address: process.env.TIERWISE_ADDRESS || "127.0.0.1:50052",
    strategy: "", head: "", timeoutS: 30, query: "",
  };
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = (): string => {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    if (flag === "--address") args.address = value();
    else if (flag === "--strategy") args.strategy = value();
    else if (flag === "--head") args.head = value();
    else if (flag === "--quality-target") args.qualityTarget = Number(value());
    else if (flag === "--timeout") args.timeoutS = Number(value());
    else if (flag === "-h" || flag === "--help") usage("");
    else if (flag.startsWith("--")) usage(`unknown option ${flag}`);
    else words.push(flag);
  }
  args.query = words.join(" ") || "What is 2 + 2?";
  if (!(args.timeoutS > 0 && args.timeoutS <= MAX_TIMEOUT_S)) {
    usage(`--timeout must be a positive number of seconds, at most ${MAX_TIMEOUT_S} (7 days)`);
  }
  if (args.qualityTarget !== undefined && !(args.qualityTarget > 0 && args.qualityTarget <= 1)) {
    usage("--quality-target must be above 0 and at most 1");
  }
  return args;
}

function usage(problem: string): never {
  const text = "usage: tierwise-example [--address HOST:PORT] [--strategy NAME] [--head NAME] [--quality-target Q] [--timeout SECONDS] QUERY...";
  if (problem) {
    process.stderr.write(`error: ${problem}\n${text}\n`);
    process.exit(2);
  }
  process.stdout.write(text + "\n");
  process.exit(0);
}

function routeJson(r: RouteResponse) {
  return {
    tier: r.tier, model: r.model, strategy: r.strategy, probabilities: r.probabilities,
    estimated_cost_usd: r.estimated_cost_usd, degraded: r.degraded, reason: r.reason,
  };
}

function summaryJson(s: CompleteResponse) {
  return {
    content: s.content, tier: s.tier, model: s.model, provider: s.provider,
    input_tokens: s.usage?.input_tokens ?? 0, output_tokens: s.usage?.output_tokens ?? 0,
    cost_usd: s.cost_usd, strategy: s.strategy, degraded: s.degraded, escalations: s.escalations,
  };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (process.env.TRACEPARENT && !traceparentFromEnv()) {
    process.stderr.write(`warning: ignoring malformed TRACEPARENT ${JSON.stringify(process.env.TRACEPARENT)}\n`);
  }
  const traceparent = traceparentFromEnv();
  const call = {
    strategy: args.strategy, head: args.head, qualityTarget: args.qualityTarget, timeoutS: args.timeoutS,
    traceparent, tracestate: traceparent ? process.env.TRACESTATE : undefined,
  };
  const tw = new RouterClient(args.address);
  try {
    const decision = await tw.route(args.query, call);
    console.log(JSON.stringify({ call: "Route", ...routeJson(decision) }));
    let d: RouteResponse | null = null;
    let s: CompleteResponse | null = null;
    const deltas: string[] = [];
    for await (const event of tw.stream(args.query, call)) {
      if (event.type === "decision") d = event.decision;
      else if (event.type === "delta") deltas.push(event.text);
      else s = event.summary;
    }
    console.log(JSON.stringify({
      call: "CompleteStream", decision: d && routeJson(d), deltas: deltas.length, text: deltas.join(""),
      summary: s && summaryJson(s),
    }));
    return 0;
  } catch (err) {
    const e = err as ServiceError;
    const code = typeof e.code === "number" ? status[e.code] : "UNKNOWN";
    process.stderr.write(`error: ${code}: ${e.details ?? e.message}\n`);
    return 1;
  } finally {
    tw.close();
  }
}

if (require.main === module) {
  main().then((code) => { process.exitCode = code; });
}
