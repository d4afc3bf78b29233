// Command tierwise-example calls Tierwise's RouterService: Route, then CompleteStream, one JSON line per call on stdout.
//
//	tierwise-example [--address HOST:PORT] [--strategy NAME] [--head NAME] [--quality-target Q] [--timeout SECONDS] QUERY...
//
// It uses the module's stubs, package tierwisev1 (`clients/build.sh go-stubs` regenerates them from protos/).
// `go build ./...` builds it in module mode; clients/build.sh builds it offline in GOPATH mode against Debian's
// grpc-go. When TRACEPARENT holds a W3C trace context it is sent as `traceparent` metadata (and TRACESTATE as
// `tracestate`), so the router's and the classifier's spans join the caller's trace.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/tierwise/tierwise/clients/go/tierwisev1"
)

// maxTimeoutS is the longest deadline every example accepts (the Node library's limit).
const maxTimeoutS = 7 * 24 * 3600

var traceparentRE = regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)

type routeJSON struct {
	Tier             int32     `json:"tier"`
	Model            string    `json:"model"`
	Strategy         string    `json:"strategy"`
	Probabilities    []float32 `json:"probabilities"`
	EstimatedCostUSD float64   `json:"estimated_cost_usd"`
	Degraded         bool      `json:"degraded"`
	Reason           string    `json:"reason"`
}

type summaryJSON struct {
	Content      string  `json:"content"`
	Tier         int32   `json:"tier"`
	Model        string  `json:"model"`
	Provider     string  `json:"provider"`
	InputTokens  int32   `json:"input_tokens"`
	OutputTokens int32   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
	Strategy     string  `json:"strategy"`
	Degraded     bool    `json:"degraded"`
	Escalations  int32   `json:"escalations"`
}

func toRouteJSON(r *pb.RouteResponse) *routeJSON {
	if r == nil {
		return nil
	}
	probabilities := r.GetProbabilities()
	if probabilities == nil {
		probabilities = []float32{}
	}
	return &routeJSON{r.GetTier(), r.GetModel(), r.GetStrategy(), probabilities, r.GetEstimatedCostUsd(),
		r.GetDegraded(), r.GetReason()}
}

// withTrace returns ctx carrying the caller's W3C trace context as outgoing metadata, if TRACEPARENT holds one.
func withTrace(ctx context.Context) context.Context {
	traceparent := strings.ToLower(strings.TrimSpace(os.Getenv("TRACEPARENT")))
	if traceparent == "" {
		return ctx
	}
	if !traceparentRE.MatchString(traceparent) {
		fmt.Fprintf(os.Stderr, "warning: ignoring malformed TRACEPARENT %q\n", os.Getenv("TRACEPARENT"))
		return ctx
	}
	pairs := []string{"traceparent", traceparent}
	if state := os.Getenv("TRACESTATE"); state != "" {
		pairs = append(pairs, "tracestate", state)
	}
	return metadata.AppendToOutgoingContext(ctx, pairs...)
}

func printJSON(v interface{}) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(line))
}

func run() error {
	defaultAddress := os.Getenv("TIERWISE_ADDRESS")
	if defaultAddress == "" {
		defaultAddress = "127.0.0.1:50052"
	}
	address := flag.String("address", defaultAddress, "router address HOST:PORT")
	strategy := flag.String("strategy", "", "routing strategy (empty = the router's default)")
	head := flag.String("head", "", "classifier head (empty = the classifier's default)")
	qualityTarget := flag.Float64("quality-target", 0, "quality vs frontier the decision is held to, e.g. 0.99 (0 = the head's default)")
	timeoutS := flag.Float64("timeout", 30, "deadline of each call, in seconds")
	flag.Parse()
	if !(*timeoutS > 0 && *timeoutS <= maxTimeoutS) { // NaN too; past an int64 of nanoseconds a deadline wraps
		return usageError("-timeout must be a positive number of seconds, at most 604800 (7 days)")
	}
	targetGiven := false
	flag.Visit(func(f *flag.Flag) { targetGiven = targetGiven || f.Name == "quality-target" })
	if targetGiven && !(*qualityTarget > 0 && *qualityTarget <= 1) {
		return usageError("-quality-target must be above 0 and at most 1")
	}
	var target *float32 // unset: the head's default target
	if targetGiven {
		t := float32(*qualityTarget)
		target = &t
	}
	timeout := time.Duration(*timeoutS * float64(time.Second))
	query := strings.Join(flag.Args(), " ")
	if query == "" {
		query = "What is 2 + 2?"
	}

	// grpc-go 1.33 (Debian 12) predates credentials/insecure; WithInsecure is its plaintext option.
	conn, err := grpc.Dial(*address, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewRouterServiceClient(conn)

	ctx, cancel := context.WithTimeout(withTrace(context.Background()), timeout)
	defer cancel()
	decision, err := client.Route(ctx, &pb.RouteRequest{Query: query, Strategy: *strategy, Head: *head, QualityTarget: target})
	if err != nil {
		return err
	}
	printJSON(struct {
		Call string `json:"call"`
		*routeJSON
	}{"Route", toRouteJSON(decision)})

	ctx, cancel = context.WithTimeout(withTrace(context.Background()), timeout)
	defer cancel()
	stream, err := client.CompleteStream(ctx, &pb.CompleteRequest{
		Messages: []*pb.Message{{Role: "user", Content: query}}, Strategy: *strategy, Head: *head, QualityTarget: target})
	if err != nil {
		return err
	}
	var first *pb.RouteResponse
	var deltas []string
	var summary *summaryJSON
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch e := event.GetEvent().(type) {
		case *pb.CompleteStreamResponse_Decision:
			first = e.Decision
		case *pb.CompleteStreamResponse_Delta:
			deltas = append(deltas, e.Delta)
		case *pb.CompleteStreamResponse_Summary:
			s := e.Summary
			summary = &summaryJSON{s.GetContent(), s.GetTier(), s.GetModel(), s.GetProvider(),
				s.GetUsage().GetInputTokens(), s.GetUsage().GetOutputTokens(), s.GetCostUsd(), s.GetStrategy(),
				s.GetDegraded(), s.GetEscalations()}
		}
	}
	printJSON(struct {
		Call     string       `json:"call"`
		Decision *routeJSON   `json:"decision"`
		Deltas   int          `json:"deltas"`
		Text     string       `json:"text"`
		Summary  *summaryJSON `json:"summary"`
	}{"CompleteStream", toRouteJSON(first), len(deltas), strings.Join(deltas, ""), summary})
	return nil
}

// usageError is a bad argument: exit status 2, as the Node and Java examples give.
type usageError string

func (e usageError) Error() string { return string(e) }

func main() {
	if err := run(); err != nil {
		if problem, ok := err.(usageError); ok {
			fmt.Fprintf(os.Stderr, "error: %s\n", problem)
			os.Exit(2)
		}
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "error: %s: %s\n", strings.ToUpper(codeName(s.Code().String())), s.Message())
		} else {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
		}
		os.Exit(1)
	}
}

// codeName turns grpc-go's "InvalidArgument" into the canonical "INVALID_ARGUMENT".
func codeName(camel string) string {
	var b strings.Builder
	for i, r := range camel {
		if i > 0 && r >= 'A' && r <= 'Z' && camel[i-1] >= 'a' && camel[i-1] <= 'z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}
