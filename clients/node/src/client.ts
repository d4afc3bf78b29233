// Tierwise RouterService example client for Node: Route, then CompleteStream, one JSON line per call on stdout.
//
//   node build/src/client.js [--address HOST:PORT] [--strategy NAME] [--head NAME] [--timeout SECONDS] QUERY...
//
// The stubs are loaded at run time from protos/ by @grpc/proto-loader; the TypeScript types in gen/ are
// generated from the same files by proto-loader-gen-types (see ../build.sh). When TRACEPARENT holds a W3C
// trace context it is sent as `traceparent` metadata (and TRACESTATE as `tracestate`), so the router's and
// classifier's spans join the caller's trace.
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "../gen/router";
import type { CompleteRequest } from "../gen/tierwise/v1/CompleteRequest";
import type { CompleteResponse__Output } from "../gen/tierwise/v1/CompleteResponse";
import type { RouteResponse__Output } from "../gen/tierwise/v1/RouteResponse";
import type { RouterServiceClient } from "../gen/tierwise/v1/RouterService";

// These options must match the ones gen/ was generated with (package.json "gen").
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
};
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

interface Args {
  address: string;
  strategy: string;
  head: string;
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
    else if (flag === "--timeout") args.timeoutS = Number(value());
    else if (flag === "-h" || flag === "--help") usage("");
    else if (flag.startsWith("--")) usage(`unknown option ${flag}`);
    else words.push(flag);
  }
  args.query = words.join(" ") || "What is 2 + 2?";
  if (!(args.timeoutS > 0)) usage("--timeout must be a positive number of seconds");
  return args;
}

function usage(problem: string): never {
  const text = "usage: client.js [--address HOST:PORT] [--strategy NAME] [--head NAME] [--timeout SECONDS] QUERY...";
  if (problem) {
    process.stderr.write(`error: ${problem}\n${text}\n`);
    process.exit(2);
  }
  process.stdout.write(text + "\n");
  process.exit(0);
}

export function protosDir(): string {
  // build/src/client.js -> the repository's protos/ (override with TIERWISE_PROTOS).
  return process.env.TIERWISE_PROTOS || path.resolve(__dirname, "..", "..", "..", "..", "protos");
}

export function connect(address: string): RouterServiceClient {
  const definition = protoLoader.loadSync("tierwise/v1/router.proto", { ...LOADER_OPTIONS, includeDirs: [protosDir()] });
  const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  return new proto.tierwise.v1.RouterService(address, grpc.credentials.createInsecure());
}

/** Call metadata carrying the caller's W3C trace context, if TRACEPARENT holds one. */
export function traceMetadata(env: NodeJS.ProcessEnv = process.env): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const traceparent = (env.TRACEPARENT || "").trim().toLowerCase();
  if (traceparent) {
    if (!TRACEPARENT.test(traceparent)) {
      process.stderr.write(`warning: ignoring malformed TRACEPARENT ${JSON.stringify(env.TRACEPARENT)}\n`);
    } else {
      metadata.set("traceparent", traceparent);
      if (env.TRACESTATE) metadata.set("tracestate", env.TRACESTATE);
    }
  }
  return metadata;
}

function deadline(timeoutS: number): Date {
  return new Date(Date.now() + timeoutS * 1000);
}

export function route(client: RouterServiceClient, args: Args): Promise<RouteResponse__Output> {
  return new Promise((resolve, reject) => {
    client.Route({ query: args.query, strategy: args.strategy, head: args.head }, traceMetadata(),
      { deadline: deadline(args.timeoutS) }, (err, reply) => (err || !reply ? reject(err) : resolve(reply)));
  });
}

export interface StreamResult {
  decision: RouteResponse__Output | null;
  deltas: string[];
  summary: CompleteResponse__Output | null;
}

export function completeStream(client: RouterServiceClient, args: Args): Promise<StreamResult> {
  const request: CompleteRequest = {
    messages: [{ role: "user", content: args.query }], strategy: args.strategy, head: args.head,
  };
  const result: StreamResult = { decision: null, deltas: [], summary: null };
  return new Promise((resolve, reject) => {
    const call = client.CompleteStream(request, traceMetadata(), { deadline: deadline(args.timeoutS) });
    call.on("data", (event) => {
      if (event.event === "decision") result.decision = event.decision ?? null;
      else if (event.event === "delta") result.deltas.push(event.delta ?? "");
      else if (event.event === "summary") result.summary = event.summary ?? null;
    });
    call.on("error", reject);
    call.on("end", () => resolve(result));
  });
}

function routeJson(r: RouteResponse__Output) {
  return {
    tier: r.tier, model: r.model, strategy: r.strategy, probabilities: r.probabilities,
    estimated_cost_usd: r.estimated_cost_usd, degraded: r.degraded, reason: r.reason,
  };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const client = connect(args.address);
  try {
    const decision = await route(client, args);
    console.log(JSON.stringify({ call: "Route", ...routeJson(decision) }));
    const { decision: d, deltas, summary: s } = await completeStream(client, args);
    console.log(JSON.stringify({
      call: "CompleteStream",
      decision: d && routeJson(d),
      deltas: deltas.length,
      text: deltas.join(""),
      summary: s && {
        content: s.content, tier: s.tier, model: s.model, provider: s.provider,
        input_tokens: s.usage?.input_tokens ?? 0, output_tokens: s.usage?.output_tokens ?? 0,
        cost_usd: s.cost_usd, strategy: s.strategy, degraded: s.degraded, escalations: s.escalations,
      },
    }));
    return 0;
  } catch (err) {
    const e = err as grpc.ServiceError;
    const code = typeof e.code === "number" ? grpc.status[e.code] : "UNKNOWN";
    process.stderr.write(`error: ${code}: ${e.details ?? e.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main().then((code) => { process.exitCode = code; });
}
