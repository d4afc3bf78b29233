// @tierwise/client: a typed client of Tierwise's RouterService for Node (@grpc/grpc-js + @grpc/proto-loader).
//
//   import { RouterClient } from "@tierwise/client";
//   const tw = new RouterClient("127.0.0.1:50052", { timeoutS: 30 });
//   const decision = await tw.route("What is 2 + 2?");          // decision.tier, decision.model, ...
//   const answer = await tw.complete("Write a haiku");           // answer.content, answer.cost_usd, ...
//   for await (const event of tw.stream("Tell me a story")) {    // decision, then deltas, then the summary
//     if (event.type === "delta") process.stdout.write(event.text);
//   }
//   tw.close();
//
// router.proto ships in the package (proto/) and is loaded at run time; the types in gen/ are generated from it
// with the same loader options (package.json "gen"), so they describe exactly the objects received.
import { randomUUID } from "node:crypto";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "../gen/router";
import type { CompleteRequest } from "../gen/tierwise/v1/CompleteRequest";
import type { CompleteResponse__Output } from "../gen/tierwise/v1/CompleteResponse";
import type { CompleteStreamResponse__Output } from "../gen/tierwise/v1/CompleteStreamResponse";
import type { Message } from "../gen/tierwise/v1/Message";
import type { RouteRequest } from "../gen/tierwise/v1/RouteRequest";
import type { RouteResponse__Output } from "../gen/tierwise/v1/RouteResponse";
import type { RouterServiceClient } from "../gen/tierwise/v1/RouterService";

export type RouteResponse = RouteResponse__Output;
export type CompleteResponse = CompleteResponse__Output;
export type { Message };

// These options must match the ones gen/ was generated with (package.json "gen").
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
};
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
// UNAVAILABLE (a restarting router, a dropped connection) is retried by grpc-js before any response arrived.
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [{
    name: [{ service: "tierwise.v1.RouterService" }],
    retryPolicy: {
      maxAttempts: 4, initialBackoff: "0.2s", maxBackoff: "2s", backoffMultiplier: 2,
      retryableStatusCodes: ["UNAVAILABLE"],
    },
  }],
});

export interface ClientOptions {
  /** Deadline of each call in seconds (default 60). */
  timeoutS?: number;
  /** Sent as `authorization: Bearer <key>` metadata. */
  apiKey?: string;
  /** Use TLS; `rootCerts` (PEM) default to the system roots. */
  tls?: boolean;
  rootCerts?: Buffer;
  /** PEM client certificate chain and private key, for a router that requires mTLS. */
  certChain?: Buffer;
  privateKey?: Buffer;
  /** Extra metadata sent with every call. */
  metadata?: Record<string, string>;
  /** Where tierwise/v1/router.proto is found (default: the package's proto/, or $TIERWISE_PROTOS). */
  protosDir?: string;
}

export interface CallOptions {
  strategy?: string;
  head?: string;
  /** The quality vs frontier the decision is held to, e.g. 0.99 (unset: the head's default). */
  qualityTarget?: number;
  timeoutS?: number;
  /** A W3C trace context: the router's spans become children of the caller's span. */
  traceparent?: string;
  tracestate?: string;
}

export interface CompleteOptions extends CallOptions {
  /** Sent with the call and each of its retries, so one whose connection dropped is answered and paid once
   * (complete only; a random one by default; "" for none, so that a call given up stops at the router at once). */
  idempotencyKey?: string;
  maxTokens?: number;
  temperature?: number;
  /** The other generation options, passed to the provider that answers as given; unset ones are not sent. */
  topP?: number;
  stop?: string | string[];
  seed?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** OpenAI's response_format object, e.g. { type: "json_object" }. */
  responseFormat?: Record<string, unknown>;
  /** OpenAI's function tools; the model's calls come back in the response's tool_calls. */
  tools?: Record<string, unknown>[];
  /** "auto", "none", "required", or { type: "function", function: { name } }. */
  toolChoice?: string | Record<string, unknown>;
  parallelToolCalls?: boolean;
  /** Return the answer's tokens with their log probabilities (the response's logprobs), with 0 to 20 alternatives. */
  logprobs?: boolean;
  topLogprobs?: number;
}

/** A user message, or the whole conversation. */
export type Messages = string | Message[];

/** What CompleteStream sends: the decision once, the answer in pieces, then the totals once. */
export type StreamEvent =
  | { type: "decision"; decision: RouteResponse }
  | { type: "delta"; text: string }
  | { type: "summary"; summary: CompleteResponse };

export function defaultProtosDir(): string {
  // build/src/index.js -> the package's proto/ (copied from the repository's protos/ by `npm run build`).
  return process.env.TIERWISE_PROTOS || path.resolve(__dirname, "..", "..", "proto");
}

const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
export const MAX_TIMEOUT_S = 7 * 24 * 3600;

export class RouterClient {
  private readonly client: RouterServiceClient;
  private readonly options: ClientOptions;

  constructor(address: string, options: ClientOptions = {}) {
    if ((options.certChain === undefined) !== (options.privateKey === undefined)) {
      throw new Error("certChain and privateKey: give both or neither");
    }
    if (options.certChain !== undefined && !options.tls) throw new Error("certChain: a client certificate needs tls");
    if (options.timeoutS !== undefined && !(options.timeoutS > 0 && options.timeoutS <= MAX_TIMEOUT_S)) {
      throw new Error(`timeoutS must be positive and at most ${MAX_TIMEOUT_S}`);
    }
    this.options = options;
    const definition = protoLoader.loadSync("tierwise/v1/router.proto",
      { ...LOADER_OPTIONS, includeDirs: [options.protosDir || defaultProtosDir()] });
    const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    const credentials = options.tls
      ? grpc.credentials.createSsl(options.rootCerts ?? null, options.privateKey ?? null, options.certChain ?? null)
      : grpc.credentials.createInsecure();
    // An answer with log probabilities can pass gRPC's default 4 MiB per message.
    this.client = new proto.tierwise.v1.RouterService(address, credentials,
      { "grpc.service_config": SERVICE_CONFIG, "grpc.max_receive_message_length": MAX_MESSAGE_BYTES });
  }

  /** The router's decision for `query`: tier, model, strategy, estimated cost, ... */
  route(query: string, options: CallOptions = {}): Promise<RouteResponse> {
    const request: RouteRequest = { query, strategy: options.strategy ?? "", head: options.head ?? "" };
    if (options.qualityTarget !== undefined) request.quality_target = options.qualityTarget;
    return new Promise((resolve, reject) => {
      this.client.Route(request, this.metadata(options), this.callOptions(options),
        (err, reply) => (err || !reply ? reject(err) : resolve(reply)));
    });
  }

  /** Decide, dispatch, and return the whole answer. */
  complete(messages: Messages, options: CompleteOptions = {}): Promise<CompleteResponse> {
    return new Promise((resolve, reject) => {
      const metadata = this.metadata(options);
      // One per call, whatever the client's metadata holds: a key there would name every call alike.
      if (options.idempotencyKey === "") metadata.remove("idempotency-key");
      else metadata.set("idempotency-key", options.idempotencyKey || randomUUID());
      this.client.Complete(completeRequest(messages, options), metadata, this.callOptions(options),
        (err, reply) => (err || !reply ? reject(err) : resolve(reply)));
    });
  }

  /** Decide, dispatch, and stream the answer; a failed call throws its grpc.ServiceError. */
  async *stream(messages: Messages, options: CompleteOptions = {}): AsyncGenerator<StreamEvent> {
    const call = this.client.CompleteStream(completeRequest(messages, options), this.metadata(options),
      this.callOptions(options));
    let ended = false;
    try {
      for await (const event of call as AsyncIterable<CompleteStreamResponse__Output>) {
        if (event.event === "decision" && event.decision) yield { type: "decision", decision: event.decision };
        else if (event.event === "delta") yield { type: "delta", text: event.delta ?? "" };
        else if (event.event === "summary" && event.summary) yield { type: "summary", summary: event.summary };
      }
      ended = true;
    } catch (err) {
      ended = true;
      throw err;
    } finally {
      if (!ended) {   // the caller stopped early: end the call; its CANCELLED status is expected
        call.on("error", () => undefined);
        call.cancel();
      }
    }
  }

  close(): void {
    this.client.close();
  }

  private metadata(options: CallOptions): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (options.traceparent !== undefined) {
      if (!TRACEPARENT.test(options.traceparent)) {
        throw new Error(`traceparent: not a W3C trace context: ${JSON.stringify(options.traceparent)}`);
      }
      metadata.set("traceparent", options.traceparent);
      if (options.tracestate) metadata.set("tracestate", options.tracestate);
    }
    for (const [key, value] of Object.entries(this.options.metadata ?? {})) metadata.set(key, value);
    // Last, so that the key given as apiKey is the one sent, whatever `metadata` holds (as in the Python client).
    if (this.options.apiKey) metadata.set("authorization", `Bearer ${this.options.apiKey}`);
    return metadata;
  }

  private callOptions(options: CallOptions): grpc.CallOptions {
    const timeoutS = options.timeoutS ?? this.options.timeoutS ?? 60;
    // Checked as the constructor checks it: grpc-js throws, uncaught, on a deadline too far away.
    if (!(timeoutS > 0 && timeoutS <= MAX_TIMEOUT_S)) throw new Error(`timeoutS must be positive and at most ${MAX_TIMEOUT_S}`);
    return { deadline: new Date(Date.now() + timeoutS * 1000) };
  }
}

function completeRequest(messages: Messages, options: CompleteOptions): CompleteRequest {
  const request: CompleteRequest = {
    messages: typeof messages === "string" ? [{ role: "user", content: messages }] : messages,
    strategy: options.strategy ?? "", head: options.head ?? "", max_tokens: options.maxTokens ?? 0,
  };
  if (options.temperature !== undefined) request.temperature = options.temperature;
  if (options.topP !== undefined) request.top_p = options.topP;
  if (options.stop !== undefined) request.stop = typeof options.stop === "string" ? [options.stop] : options.stop;
  if (options.seed !== undefined) request.seed = options.seed;
  if (options.presencePenalty !== undefined) request.presence_penalty = options.presencePenalty;
  if (options.frequencyPenalty !== undefined) request.frequency_penalty = options.frequencyPenalty;
  if (options.responseFormat !== undefined) request.response_format = JSON.stringify(options.responseFormat);
  if (options.tools !== undefined) request.tools = JSON.stringify(options.tools);
  if (options.toolChoice !== undefined) {
    request.tool_choice = typeof options.toolChoice === "string" ? options.toolChoice : JSON.stringify(options.toolChoice);
  }
  if (options.parallelToolCalls !== undefined) request.parallel_tool_calls = options.parallelToolCalls;
  if (options.logprobs !== undefined) request.logprobs = options.logprobs;
  if (options.topLogprobs !== undefined) request.top_logprobs = options.topLogprobs;
  if (options.qualityTarget !== undefined) request.quality_target = options.qualityTarget;
  return request;
}

/** A traceparent from the environment (TRACEPARENT, lowercased), or undefined when unset or malformed. */
export function traceparentFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = (env.TRACEPARENT || "").trim().toLowerCase();
  return TRACEPARENT.test(value) ? value : undefined;
}
