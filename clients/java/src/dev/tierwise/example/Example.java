package dev.tierwise.example;

import dev.tierwise.v1.CompleteRequest;
import dev.tierwise.v1.CompleteResponse;
import dev.tierwise.v1.CompleteStreamResponse;
import dev.tierwise.v1.Message;
import dev.tierwise.v1.RouteRequest;
import dev.tierwise.v1.RouteResponse;
import dev.tierwise.v1.RouterServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;

/**
 * Calls Tierwise's RouterService: Route, then CompleteStream, one JSON line per call on stdout.
 *
 * <pre>java -cp ... dev.tierwise.example.Example [--address HOST:PORT] [--strategy NAME] [--head NAME]
 *     [--quality-target Q] [--timeout SECONDS] QUERY...</pre>
 *
 * <p>The stubs (package dev.tierwise.v1) are generated from protos/ by ../build.sh with Debian's protoc and
 * grpc-java plugin, and compiled with plain javac against Debian's grpc-java and protobuf-java jars. When
 * TRACEPARENT holds a W3C trace context it is sent as {@code traceparent} metadata (and TRACESTATE as
 * {@code tracestate}), so the router's and the classifier's spans join the caller's trace.
 */
public final class Example {
  /** The longest deadline every example accepts (the Node library's limit). */
  private static final double MAX_TIMEOUT_S = 7 * 24 * 3600;
  private static final Pattern TRACEPARENT =
      Pattern.compile("^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$");

  private Example() {}

  public static void main(String[] argv) throws InterruptedException {
    String address = System.getenv().getOrDefault("TIERWISE_ADDRESS", "127.0.0.1:50052");
    String strategy = "";
    String head = "";
    Float qualityTarget = null; // unset: the head's default target
    double timeoutS = 30;
    List<String> words = new ArrayList<>();
    for (int i = 0; i < argv.length; i++) {
      String flag = argv[i];
      boolean hasValue = i + 1 < argv.length;
      switch (flag) {
        case "--address": if (!hasValue) usage(flag + " needs a value"); address = argv[++i]; break;
        case "--strategy": if (!hasValue) usage(flag + " needs a value"); strategy = argv[++i]; break;
        case "--head": if (!hasValue) usage(flag + " needs a value"); head = argv[++i]; break;
        case "--quality-target":
          if (!hasValue) usage(flag + " needs a value");
          double target = number(argv[++i]);
          if (!(target > 0 && target <= 1)) usage("--quality-target must be above 0 and at most 1");
          qualityTarget = (float) target;
          break;
        case "--timeout":
          if (!hasValue) usage(flag + " needs a value");
          timeoutS = number(argv[++i]);
          if (!(timeoutS > 0 && timeoutS <= MAX_TIMEOUT_S)) {
            usage("--timeout must be a positive number of seconds, at most 604800 (7 days)");
          }
          break;
        case "-h": case "--help": usage(null); break;
        default:
          if (flag.startsWith("--")) usage("unknown option " + flag);
          words.add(flag);
      }
    }
    long timeoutMs = (long) Math.ceil(timeoutS * 1000);
    String query = words.isEmpty() ? "What is 2 + 2?" : String.join(" ", words);

    ManagedChannel channel = ManagedChannelBuilder.forTarget(address).usePlaintext().build();
    int code = 0;
    try {
      RouterServiceGrpc.RouterServiceBlockingStub stub =
          RouterServiceGrpc.newBlockingStub(channel).withInterceptors(
              MetadataUtils.newAttachHeadersInterceptor(traceMetadata()));

      RouteRequest.Builder asked = RouteRequest.newBuilder().setQuery(query).setStrategy(strategy).setHead(head);
      if (qualityTarget != null) asked.setQualityTarget(qualityTarget);
      RouteResponse decision = stub.withDeadlineAfter(timeoutMs, TimeUnit.MILLISECONDS).route(asked.build());
      System.out.println("{\"call\":\"Route\"," + routeFields(decision) + "}");

      CompleteRequest.Builder completing = CompleteRequest.newBuilder()
          .addMessages(Message.newBuilder().setRole("user").setContent(query))
          .setStrategy(strategy).setHead(head);
      if (qualityTarget != null) completing.setQualityTarget(qualityTarget);
      CompleteRequest request = completing.build();
      RouteResponse first = null;
      List<String> deltas = new ArrayList<>();
      CompleteResponse summary = null;
      Iterator<CompleteStreamResponse> events =
          stub.withDeadlineAfter(timeoutMs, TimeUnit.MILLISECONDS).completeStream(request);
      while (events.hasNext()) {
        CompleteStreamResponse event = events.next();
        switch (event.getEventCase()) {
          case DECISION: first = event.getDecision(); break;
          case DELTA: deltas.add(event.getDelta()); break;
          case SUMMARY: summary = event.getSummary(); break;
          default: break;
        }
      }
      StringBuilder line = new StringBuilder("{\"call\":\"CompleteStream\",\"decision\":");
      line.append(first == null ? "null" : "{" + routeFields(first) + "}");
      line.append(",\"deltas\":").append(deltas.size());
      line.append(",\"text\":").append(str(String.join("", deltas)));
      line.append(",\"summary\":");
      if (summary == null) {
        line.append("null");
      } else {
        line.append("{\"content\":").append(str(summary.getContent()))
            .append(",\"tier\":").append(summary.getTier())
            .append(",\"model\":").append(str(summary.getModel()))
            .append(",\"provider\":").append(str(summary.getProvider()))
            .append(",\"input_tokens\":").append(summary.getUsage().getInputTokens())
            .append(",\"output_tokens\":").append(summary.getUsage().getOutputTokens())
            .append(",\"cost_usd\":").append(num(summary.getCostUsd()))
            .append(",\"strategy\":").append(str(summary.getStrategy()))
            .append(",\"degraded\":").append(summary.getDegraded())
            .append(",\"escalations\":").append(summary.getEscalations()).append('}');
      }
      System.out.println(line.append('}'));
    } catch (StatusRuntimeException e) {
      System.err.println("error: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      code = 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(code);
  }

  /** The caller's W3C trace context as call metadata, if TRACEPARENT holds one. */
  static Metadata traceMetadata() {
    Metadata headers = new Metadata();
    String raw = System.getenv("TRACEPARENT");
    String traceparent = raw == null ? "" : raw.trim().toLowerCase(Locale.ROOT);
    if (traceparent.isEmpty()) {
      return headers;
    }
    if (!TRACEPARENT.matcher(traceparent).matches()) {
      System.err.println("warning: ignoring malformed TRACEPARENT " + str(raw));
      return headers;
    }
    headers.put(Metadata.Key.of("traceparent", Metadata.ASCII_STRING_MARSHALLER), traceparent);
    String state = System.getenv("TRACESTATE");
    if (state != null && !state.isEmpty()) {
      headers.put(Metadata.Key.of("tracestate", Metadata.ASCII_STRING_MARSHALLER), state);
    }
    return headers;
  }

  private static String routeFields(RouteResponse r) {
    StringBuilder probabilities = new StringBuilder("[");
    for (int i = 0; i < r.getProbabilitiesCount(); i++) {
      probabilities.append(i == 0 ? "" : ",").append(num(r.getProbabilities(i)));
    }
    return "\"tier\":" + r.getTier() + ",\"model\":" + str(r.getModel()) + ",\"strategy\":" + str(r.getStrategy())
        + ",\"probabilities\":" + probabilities.append(']') + ",\"estimated_cost_usd\":"
        + num(r.getEstimatedCostUsd()) + ",\"degraded\":" + r.getDegraded() + ",\"reason\":" + str(r.getReason());
  }

  private static String num(double value) {
    return Double.isFinite(value) ? Double.toString(value) : "null";
  }

  private static String str(String s) {
    StringBuilder out = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        default:
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
      }
    }
    return out.append('"').toString();
  }

  /** The number {@code text} holds, or NaN when it holds none. */
  private static double number(String text) {
    try {
      return Double.parseDouble(text);
    } catch (NumberFormatException e) {
      return Double.NaN;
    }
  }

  private static void usage(String problem) {
    String text = "usage: Example [--address HOST:PORT] [--strategy NAME] [--head NAME] [--quality-target Q] [--timeout SECONDS] QUERY...";
    if (problem != null) {
      System.err.println("error: " + problem + "\n" + text);
      System.exit(2);
    }
    System.out.println(text);
    System.exit(0);
  }
}
