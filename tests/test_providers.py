"""Provider dispatch, retries, breakers and fallback chains against the HTTP test double on 127.0.0.1.

The official `openai` SDK talks real HTTP to tests/provider_double.py; nothing in the SDK is mocked.
Only time is injected: retry sleeps are recorded instead of slept, breaker cooldowns use a fake clock.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, TypeVar

import openai
import pytest

from router_service.breaker import BreakerState, CircuitBreaker
from router_service.providers import (Attempt, ChainExhausted, Completion, DeadlineExceeded, Outcome, Provider,
                                      ProviderConfig, ProviderFailed, ProviderNotConfigured, Sampling,
                                      StreamInterrupted, TierChain)
from router_service.retry import Failure, FailureKind, RetryPolicy, Retrier, retry_after_seconds

from .provider_double import Fault, ProviderDouble, refused_base_url

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
KEY_ENV = "TIERWISE_TEST_PROVIDER_KEY"
KEY = "sk-test-not-a-real-key"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two"}]
JITTER = 0.5  # the injected random fraction: backoff waits are exactly half their cap


class RecordedSleeps(list):
    """An injected sleep that records what it was asked to wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def double() -> ProviderDouble:
    with ProviderDouble() as running:
        yield running


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


def make_provider(base_url: str, name: str, sleeps: RecordedSleeps, *, retries: int = 2, timeout_s: float = 2.0,
                  api_key_env: str = KEY_ENV, breaker: CircuitBreaker | None = None) -> Provider:
    spec = ProviderConfig(name=name, base_url=base_url, model=f"model-{name}", api_key_env=api_key_env,
                          timeout_s=timeout_s, max_retries=retries)
    policy = RetryPolicy.with_retries(retries, base_delay_s=0.2, max_delay_s=1.0, max_retry_after_s=0.5)
    return Provider(spec, breaker=breaker, retrier=Retrier(policy, sleep=sleeps, random_fraction=lambda: JITTER))


def run(awaitable: Awaitable[T], *to_close: Provider | TierChain) -> T:
    async def main() -> T:
        try:
            return await awaitable
        finally:
            for closable in to_close:
                await closable.aclose()
    return asyncio.run(main())


async def collect(events: AsyncIterator[str | Completion]) -> tuple[list[str], Completion]:
    deltas: list[str] = []
    async for event in events:
        if isinstance(event, Completion):
            return deltas, event
        deltas.append(event)
    raise AssertionError(f"stream ended without a Completion after {deltas}")


async def collect_until_error(events: AsyncIterator[str | Completion], deltas: list[str]) -> None:
    async for event in events:
        assert isinstance(event, str), "an interrupted stream must not end with a Completion"
        deltas.append(event)


def outcomes(attempts: list[Attempt]) -> list[tuple[str, str]]:
    return [(a.provider, str(a.outcome)) for a in attempts]


# -- one provider --

def test_success_sends_the_key_and_reports_usage(double, sleeps):
    provider = make_provider(double.base_url, "a", sleeps)
    completion = run(provider.complete(MESSAGES, max_tokens=50, temperature=0.0), provider)

    assert completion.content == "answer from model-a: 5 words"
    assert (completion.provider, completion.model) == ("a", "model-a")
    assert completion.input_tokens == len("be briefwhat is two plus two") // 4
    assert completion.output_tokens == len(completion.content) // 4 and not completion.usage_estimated
    assert outcomes(completion.attempts) == [("a", "ok")] and completion.attempts[0].latency_ms > 0
    [request] = double.requests
    assert (request.model, request.stream, request.authorization) == ("model-a", False, f"Bearer {KEY}")
    assert request.body["max_tokens"] == 50 and request.body["temperature"] == 0.0
    assert sleeps == [] and completion.finish_reason == "stop"


def test_an_answer_cut_off_at_max_tokens_says_so_whole_or_streamed(double, sleeps):
    """The cascade's surface gate rejects cut-off answers, so the reason must reach it both ways."""
    chain = TierChain([make_provider(double.base_url, "a", sleeps)])
    whole = run(chain.complete(MESSAGES, max_tokens=2), chain)
    deltas, streamed = run(collect(chain.stream(MESSAGES, max_tokens=2)), chain)
    assert whole.content == streamed.content == "answer f" == "".join(deltas)
    assert whole.finish_reason == streamed.finish_reason == "length"


def test_token_log_probabilities_come_back_only_when_asked_for(double, sleeps):
    """The verify gate reads how sure its verifier was from these (router_service/replies.py)."""
    double.set_reply("model-a", '{"acceptable": true}')
    double.set_alternatives("model-a", {" true": -0.25, " false": -1.5, " maybe": -4.0})
    chain = TierChain([make_provider(double.base_url, "a", sleeps)])
    asked = run(chain.complete(MESSAGES, top_logprobs=2), chain)
    plain = run(chain.complete(MESSAGES), chain)
    assert "".join(token for token, _ in asked.tokens) == asked.content == plain.content
    assert dict(asked.tokens)[" true"] == ((" true", -0.25), (" false", -1.5)), "the two likeliest, as asked"
    assert dict(asked.tokens)["acceptable"] == (("acceptable", 0.0),)
    assert plain.tokens == ()
    first, second = (r.body for r in double.requests_for("model-a"))
    assert (first["logprobs"], first["top_logprobs"]) == (True, 2) and "logprobs" not in second


def test_a_reasoning_model_gets_its_limit_field_and_none_of_the_options_it_refuses(double, sleeps):
    """OpenAI's o-series refuse max_tokens, temperature, top_p, the penalties and logprobs with a 400."""
    spec = ProviderConfig(name="o", base_url=double.base_url, model="model-o", api_key_env=KEY_ENV,
                          max_tokens_field="max_completion_tokens",
                          drop_options=("temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs"))
    chain = TierChain([Provider(spec), make_provider(double.base_url, "a", sleeps)])
    sampling = Sampling(top_p=0.5, seed=3, presence_penalty=0.5, frequency_penalty=0.5, stop=("END",))
    whole = run(chain.complete(MESSAGES, max_tokens=2, temperature=0.3, sampling=sampling, top_logprobs=2), chain)
    deltas, streamed = run(collect(chain.stream(MESSAGES, max_tokens=2, temperature=0.3, sampling=sampling)), chain)
    assert whole.finish_reason == streamed.finish_reason == "length", "the limit still holds, in its own field"
    for body in (r.body for r in double.requests_for("model-o")):
        assert body["max_completion_tokens"] == 2 and (body["seed"], body["stop"]) == (3, ["END"])
        assert not set(body) & {"max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                                "logprobs", "top_logprobs"}, body
    assert len(double.requests_for("model-o")) == 2 and not double.requests_for("model-a")


def test_a_providers_extra_body_goes_in_every_call_over_the_callers_fields(double, sleeps):
    spec = ProviderConfig(name="o", base_url=double.base_url, model="model-o", api_key_env=KEY_ENV,
                          extra_body={"reasoning_effort": "low", "temperature": 1.0, "options": {"num_ctx": 8192}})
    chain = TierChain([Provider(spec)])
    run(chain.complete(MESSAGES, temperature=0.3, sampling=Sampling(seed=3)), chain)
    run(collect(chain.stream(MESSAGES, temperature=0.3)), chain)
    first, second = (r.body for r in double.requests_for("model-o"))
    for body in (first, second):
        assert (body["reasoning_effort"], body["temperature"], body["options"]) == ("low", 1.0, {"num_ctx": 8192})
    assert first["seed"] == 3 and second["stream"] is True


def test_server_error_is_retried_once_then_succeeds(double, sleeps):
    double.script("model-a", Fault.http_error(500))
    provider = make_provider(double.base_url, "a", sleeps)
    completion = run(provider.complete(MESSAGES), provider)

    assert completion.content.startswith("answer from model-a")
    assert len(double.requests_for("model-a")) == 2
    assert [(a.outcome, a.status_code) for a in completion.attempts] == [(Outcome.ERROR, 500), (Outcome.OK, None)]
    assert sleeps == [pytest.approx(0.2 * JITTER)]


def test_backoff_grows_exponentially_with_full_jitter_until_attempts_run_out(double, sleeps):
    double.set_persistent("model-a", Fault.http_error(503))
    provider = make_provider(double.base_url, "a", sleeps, retries=3)
    with pytest.raises(ProviderFailed, match="HTTP 503"):
        run(provider.complete(MESSAGES), provider)

    assert len(double.requests_for("model-a")) == 4
    assert sleeps == [pytest.approx(x * JITTER) for x in (0.2, 0.4, 0.8)]


def test_rate_limit_waits_for_retry_after(double, sleeps):
    double.script("model-a", Fault.rate_limited("0.3"))
    provider = make_provider(double.base_url, "a", sleeps)
    completion = run(provider.complete(MESSAGES), provider)

    assert sleeps == [pytest.approx(0.3)]
    rate_limited, ok = completion.attempts
    assert (rate_limited.status_code, rate_limited.retry_after) == (429, 0.3)
    assert ok.outcome is Outcome.OK and len(double.requests_for("model-a")) == 2


@pytest.mark.parametrize("retry_after", ["60", "Wed, 01 Jan 2125 00:00:00 GMT"], ids=["seconds", "date"])
def test_a_retry_after_longer_than_a_retry_may_wait_fails_over_at_once(double, sleeps, retry_after):
    double.set_persistent("model-a", Fault.rate_limited(retry_after))
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    completion = run(chain.complete(MESSAGES), chain)
    assert completion.provider == "b" and sleeps == []
    assert len(double.requests_for("model-a")) == 1, "not asked again before it said it could answer"


def test_real_retry_after_wait_is_slept(double):
    double.script("model-a", Fault.rate_limited("0.25"))
    spec = ProviderConfig(name="a", base_url=double.base_url, model="model-a", api_key_env=KEY_ENV, timeout_s=2.0)
    provider = Provider(spec)  # the default retrier: real asyncio.sleep
    started = time.monotonic()
    run(provider.complete(MESSAGES), provider)

    first, second = double.requests_for("model-a")
    assert 0.25 <= time.monotonic() - started < 1.5
    assert first.fault == Fault.rate_limited("0.25") and second.fault is None


def test_bad_request_is_not_retried_and_does_not_count_against_the_provider(double, sleeps):
    double.script("model-a", Fault.http_error(400))
    provider = make_provider(double.base_url, "a", sleeps)
    with pytest.raises(ProviderFailed, match="HTTP 400") as raised:
        run(provider.complete(MESSAGES), provider)

    assert len(double.requests_for("model-a")) == 1 and sleeps == []
    assert [(a.outcome, a.status_code) for a in raised.value.attempts] == [(Outcome.ERROR, 400)]
    assert provider.breaker.consecutive_failures == 0


def test_missing_key_raises_provider_not_configured_without_calling(double, sleeps, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    provider = make_provider(double.base_url, "a", sleeps)
    with pytest.raises(ProviderNotConfigured) as raised:
        run(provider.complete(MESSAGES), provider)

    assert KEY_ENV in str(raised.value) and double.base_url in str(raised.value)
    assert raised.value.missing_env == [KEY_ENV]
    assert outcomes(raised.value.attempts) == [("a", "not_configured")]
    assert double.requests == []


def test_key_is_read_at_call_time(double, sleeps, monkeypatch):
    provider = make_provider(double.base_url, "a", sleeps)

    async def rotate_key_between_calls() -> None:
        await provider.complete(MESSAGES)
        monkeypatch.setenv(KEY_ENV, "sk-rotated")
        await provider.complete(MESSAGES)

    run(rotate_key_between_calls(), provider)
    assert [r.authorization for r in double.requests] == [f"Bearer {KEY}", "Bearer sk-rotated"]


def test_deadline_caps_the_attempt_timeout_without_blaming_the_provider(double, sleeps):
    double.set_persistent("model-a", Fault.hang(2.0))
    provider = make_provider(double.base_url, "a", sleeps, timeout_s=5.0)
    chain = TierChain([provider, make_provider(double.base_url, "b", sleeps)])
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        run(chain.complete(MESSAGES, deadline=started + 0.3), chain)

    assert time.monotonic() - started < 1.0
    [attempt] = raised.value.attempts
    assert attempt.outcome is Outcome.ERROR and attempt.error.startswith("timed out after 0.")
    assert len(double.requests_for("model-a")) == 1 and double.requests_for("model-b") == []
    assert provider.breaker.consecutive_failures == 0


# -- chains --

def test_timeout_is_retried_then_the_next_provider_answers(double, sleeps):
    double.set_persistent("model-a", Fault.hang(1.0))
    chain = TierChain([make_provider(double.base_url, "a", sleeps, retries=1, timeout_s=0.2),
                       make_provider(double.base_url, "b", sleeps)])
    completion = run(chain.complete(MESSAGES), chain)

    assert completion.content.startswith("answer from model-b") and completion.provider == "b"
    assert outcomes(completion.attempts) == [("a", "error"), ("a", "error"), ("b", "ok")]
    assert all(a.error == "timed out after 0.2s" for a in completion.attempts[:2])
    assert len(double.requests_for("model-a")) == 2 and len(double.requests_for("model-b")) == 1


def test_malformed_json_fails_over_without_retrying(double, sleeps):
    double.script("model-a", Fault.malformed_json())
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    completion = run(chain.complete(MESSAGES), chain)

    assert completion.provider == "b"
    assert outcomes(completion.attempts) == [("a", "error"), ("b", "ok")]
    assert "unreadable response" in completion.attempts[0].error
    assert len(double.requests_for("model-a")) == 1 and sleeps == []


def _completion(message: object = None, usage: object = None, choices: object = None) -> str:
    choice = {"index": 0, "finish_reason": "stop", "message": message}
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
                       "choices": [choice] if choices is None else choices})


def _events(*chunks: object) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


ODD_ANSWERS = {
    "an HTML page": Fault.odd_body("<html><body>502 Bad Gateway</body></html>", "text/html"),
    "a null message": Fault.odd_body(_completion()),
    "a null choice": Fault.odd_body(_completion(choices=[None])),
    "text that is not a string": Fault.odd_body(_completion({"role": "assistant", "content": {"text": "hi"}})),
}
ODD_STREAMS = {
    "a chunk without its delta": Fault.odd_body(_events({"choices": [{"index": 0, "delta": None}]}),
                                                "text/event-stream"),
    "a chunk that is a string": Fault.odd_body(_events("hello"), "text/event-stream"),
}


@pytest.mark.parametrize("fault", ODD_ANSWERS.values(), ids=ODD_ANSWERS.keys())
def test_a_200_without_the_apis_shape_fails_over_and_counts_against_the_breaker(double, sleeps, fault):
    double.set_persistent("model-a", fault)
    breaker = CircuitBreaker("a", failure_threshold=2, cooldown_s=60)
    chain = TierChain([make_provider(double.base_url, "a", sleeps, breaker=breaker),
                       make_provider(double.base_url, "b", sleeps)])

    async def twice():
        return [await chain.complete(MESSAGES) for _ in range(2)]
    completions = run(twice(), chain)
    assert [c.provider for c in completions] == ["b", "b"]
    assert "unreadable response: MisshapenResponse" in completions[0].attempts[0].error
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_nested_past_the_parser_fails_over_like_any_other_bad_answer(double, sleeps, stream):
    deep = "[" * 100_000
    double.set_persistent("model-a", Fault.odd_body(f"data: {deep}\n\n" if stream else deep,
                                                    "text/event-stream" if stream else "application/json"))
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    completion = run(collect(chain.stream(MESSAGES)), chain)[1] if stream else run(chain.complete(MESSAGES), chain)
    assert completion.provider == "b" and outcomes(completion.attempts)[0] == ("a", "error")
    assert "unreadable response: RecursionError" in completion.attempts[0].error


@pytest.mark.parametrize("fault", ODD_STREAMS.values(), ids=ODD_STREAMS.keys())
def test_a_stream_without_the_apis_shape_fails_over_before_its_first_text(double, sleeps, fault):
    double.set_persistent("model-a", fault)
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    deltas, completion = run(collect(chain.stream(MESSAGES)), chain)
    assert completion.provider == "b" and "".join(deltas) == completion.content
    assert outcomes(completion.attempts)[0] == ("a", "error")


@pytest.mark.parametrize("usage", ["x", {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": "x"}],
                         ids=["usage a string", "details a string"])
def test_a_streams_misshapen_usage_at_its_end_is_estimated_not_an_error(double, sleeps, usage):
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    fault = Fault.odd_body(_events({**chunk, "choices": [{"index": 0, "delta": {"content": "four"}}]},
                                   {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                                   {**chunk, "choices": [], "usage": usage}), "text/event-stream")
    double.set_persistent("model-a", fault)
    provider = make_provider(double.base_url, "a", sleeps)
    deltas, completion = run(collect(provider.stream(MESSAGES)), provider)
    assert deltas == ["four"] and completion.content == "four" and completion.output_tokens > 0


def test_a_finish_reason_that_is_no_string_breaks_the_stream_it_ends(double, sleeps):
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    double.set_persistent("model-a", Fault.odd_body(_events(
        {**chunk, "choices": [{"index": 0, "delta": {"content": "four"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": 7}]}), "text/event-stream"))
    provider = make_provider(double.base_url, "a", sleeps)
    deltas: list[str] = []
    with pytest.raises(StreamInterrupted):
        run(collect_until_error(provider.stream(MESSAGES), deltas), provider)
    assert deltas == ["four"]


def test_a_stream_that_breaks_at_its_end_before_any_text_fails_over(double, sleeps):
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    double.set_persistent("model-a", Fault.odd_body(_events(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": 7}]}), "text/event-stream"))
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    deltas, completion = run(collect(chain.stream(MESSAGES)), chain)
    assert completion.provider == "b" and "".join(deltas) == completion.content, "nothing had gone out from a"
    assert outcomes(completion.attempts)[0] == ("a", "error")


@pytest.mark.parametrize("usage", [{"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
                                   {"prompt_tokens": -1000000, "completion_tokens": -1000000, "total_tokens": 0},
                                   {"prompt_tokens": 10, "completion_tokens": 3_000_000_000, "total_tokens": 0}])
def test_usage_that_cannot_be_billed_is_estimated(double, sleeps, usage):
    double.set_persistent("model-a", Fault.odd_body(_completion({"role": "assistant", "content": "four"}, usage)))
    completion = run(make_provider(double.base_url, "a", sleeps).complete(MESSAGES))
    assert completion.usage_estimated and completion.input_tokens > 0 and 0 < completion.output_tokens < 100


def test_more_cached_tokens_than_the_prompt_held_are_read_as_the_whole_prompt(double, sleeps):
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 500}}
    double.set_persistent("model-a", Fault.odd_body(_completion({"role": "assistant", "content": "four"}, usage)))
    completion = run(make_provider(double.base_url, "a", sleeps).complete(MESSAGES))
    assert (completion.input_tokens, completion.cached_input_tokens) == (10, 10), "the usage told is the usage billed"


def test_connection_refused_is_retried_then_fails_over(double, sleeps):
    chain = TierChain([make_provider(refused_base_url(), "a", sleeps, retries=1),
                       make_provider(double.base_url, "b", sleeps)])
    completion = run(chain.complete(MESSAGES), chain)

    assert completion.provider == "b"
    assert outcomes(completion.attempts) == [("a", "error"), ("a", "error"), ("b", "ok")]
    assert all("connection" in a.error.lower() for a in completion.attempts[:2])
    assert [r.model for r in double.requests] == ["model-b"]


def test_dropped_connection_is_retried_on_the_same_provider(double, sleeps):
    double.script("model-a", Fault.drop_connection())
    provider = make_provider(double.base_url, "a", sleeps)
    completion = run(provider.complete(MESSAGES), provider)

    assert outcomes(completion.attempts) == [("a", "error"), ("a", "ok")]
    assert len(double.requests_for("model-a")) == 2


def test_exhausted_chain_names_every_attempt(double, sleeps, monkeypatch):
    monkeypatch.setenv("TIERWISE_TEST_UNSET_KEY", "")
    double.set_persistent("model-a", Fault.http_error(502))
    double.set_persistent("model-d", Fault.http_error(404))
    open_breaker = CircuitBreaker("c", failure_threshold=1, clock=FakeClock())
    open_breaker.record_failure()
    chain = TierChain([make_provider(double.base_url, "a", sleeps, retries=1),
                       make_provider(double.base_url, "b", sleeps, api_key_env="TIERWISE_TEST_UNSET_KEY"),
                       make_provider(double.base_url, "c", sleeps, breaker=open_breaker),
                       make_provider(double.base_url, "d", sleeps)])
    with pytest.raises(ChainExhausted) as raised:
        run(chain.complete(MESSAGES), chain)

    assert outcomes(raised.value.attempts) == [("a", "error"), ("a", "error"), ("b", "not_configured"),
                                               ("c", "skipped_breaker_open"), ("d", "error")]
    message = str(raised.value)
    assert message.startswith("every provider failed: 5 attempts: ")
    for expected in ("a/model-a: error (HTTP 502", "b/model-b: not_configured (environment variable "
                     "TIERWISE_TEST_UNSET_KEY is not set)", "c/model-c: skipped_breaker_open (circuit breaker open)",
                     "d/model-d: error (HTTP 404"):
        assert expected in message
    assert KEY not in message
    assert [r.model for r in double.requests] == ["model-a", "model-a", "model-d"]


def test_chain_with_no_configured_provider_is_a_precondition_failure(double, sleeps, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    with pytest.raises(ProviderNotConfigured) as raised:
        run(chain.complete(MESSAGES), chain)

    assert raised.value.missing_env == [KEY_ENV, KEY_ENV]
    assert "'a'" in str(raised.value) and "'b'" in str(raised.value) and double.requests == []


def test_on_attempt_sees_every_attempt_as_it_happens_and_cannot_break_the_call(double, sleeps):
    double.script("model-a", Fault.http_error(500), Fault.http_error(500), Fault.http_error(500))
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    seen: list[Attempt] = []

    def hook(attempt: Attempt) -> None:
        seen.append(attempt)
        raise RuntimeError("a broken metrics exporter")

    completion = run(chain.complete(MESSAGES, on_attempt=hook), chain)
    assert seen == completion.attempts
    assert outcomes(seen) == [("a", "error")] * 3 + [("b", "ok")]


# -- circuit breaker --

def test_a_probe_that_streams_closes_the_breaker_at_its_first_text(double, sleeps):
    """A long stream as the probe: other calls need not wait out the whole stream to use the provider again."""
    clock = FakeClock()
    breaker = CircuitBreaker("a", failure_threshold=1, cooldown_s=10, clock=clock)
    provider = make_provider(double.base_url, "a", sleeps, retries=0, breaker=breaker)
    double.script("model-a", Fault.http_error(500))

    async def scenario() -> BreakerState:
        with pytest.raises(ProviderFailed):
            await provider.complete(MESSAGES)
        clock.now += 10
        async with aclosing(provider.stream(MESSAGES)) as events:
            await anext(events)  # the probe's first text; the rest still to come
            return breaker.state

    assert run(scenario(), provider) is BreakerState.CLOSED


def test_the_breaker_gauge_reads_half_open_once_the_cooldown_passed_though_no_call_came():
    """A quiet provider's breaker, or a fallback's, takes its step to half-open only when next asked; the gauge
    must not read open until then (the breaker-open alert would fire for a provider that is ready to probe)."""
    from router_service.telemetry import BREAKER_VALUE, RouterMetrics

    clock = FakeClock()
    breaker = CircuitBreaker("a", failure_threshold=1, cooldown_s=10, clock=clock)
    metrics = RouterMetrics()
    metrics.track_breakers({(1, "a"): breaker})
    breaker.record_failure()
    assert [o.value for o in metrics._observe_breakers(None)] == [BREAKER_VALUE[BreakerState.OPEN]]
    clock.now += 10
    assert [o.value for o in metrics._observe_breakers(None)] == [BREAKER_VALUE[BreakerState.HALF_OPEN]]
    assert breaker.allow(), "reading it took no step of its own: the probe is still to go out"


def test_breaker_opens_rejects_half_opens_with_one_probe_and_closes(double, sleeps):
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = CircuitBreaker("a", failure_threshold=2, cooldown_s=10, clock=clock,
                             on_state_change=lambda *change: changes.append(change))
    provider = make_provider(double.base_url, "a", sleeps, retries=0, breaker=breaker)
    double.script("model-a", Fault.http_error(500), Fault.http_error(500), Fault.delay(0.3))

    async def scenario() -> tuple[list[Completion | BaseException], list[Attempt]]:
        for _ in range(2):
            with pytest.raises(ProviderFailed):
                await provider.complete(MESSAGES)
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(ProviderFailed, match="circuit breaker open") as rejected:
            await provider.complete(MESSAGES)
        clock.now += 9.9
        assert breaker.state is BreakerState.OPEN
        clock.now += 0.1
        assert breaker.state is BreakerState.HALF_OPEN
        # Two calls at once: the first is the probe (its answer is delayed), the second is turned away.
        results = await asyncio.gather(provider.complete(MESSAGES), provider.complete(MESSAGES),
                                       return_exceptions=True)
        return results, rejected.value.attempts

    (probe, turned_away), rejected_attempts = run(scenario(), provider)
    assert outcomes(rejected_attempts) == [("a", "skipped_breaker_open")]
    assert isinstance(probe, Completion) and probe.content.startswith("answer from model-a")
    assert isinstance(turned_away, ProviderFailed)
    assert outcomes(turned_away.attempts) == [("a", "skipped_breaker_open")]
    assert len(double.requests_for("model-a")) == 3  # two failures and the probe: nothing while open
    assert breaker.state is BreakerState.CLOSED
    assert [(old, new) for _, old, new in changes] == [("closed", "open"), ("open", "half_open"),
                                                       ("half_open", "closed")]


def test_failed_probe_reopens_for_a_new_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker("a", failure_threshold=3, cooldown_s=5, clock=clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_failures_must_be_consecutive_to_open_the_breaker():
    breaker = CircuitBreaker("a", failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_a_cancelled_probe_frees_the_probe_slot(double, sleeps):
    clock = FakeClock()
    breaker = CircuitBreaker("a", failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    provider = make_provider(double.base_url, "a", sleeps, breaker=breaker)
    double.script("model-a", Fault.delay(1.0))

    async def cancel_the_probe() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(provider.complete(MESSAGES), timeout=0.1)

    run(cancel_the_probe(), provider)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()


# -- streaming --

def test_stream_yields_deltas_then_the_completion_with_usage(double, sleeps):
    chain = TierChain([make_provider(double.base_url, "a", sleeps)])
    deltas, completion = run(collect(chain.stream(MESSAGES, max_tokens=20)), chain)

    assert deltas == ["answer ", "from ", "model-a: ", "5 ", "words"]
    assert completion.content == "".join(deltas) and not completion.usage_estimated
    assert completion.output_tokens == len(completion.content) // 4
    assert outcomes(completion.attempts) == [("a", "ok")]
    [request] = double.requests
    assert request.stream and request.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("fault", [Fault.http_error(500), Fault.malformed_json(), Fault.disconnect_mid_stream(0)],
                         ids=["http-500", "malformed", "disconnect-before-first-token"])
def test_stream_failing_before_the_first_token_fails_over(double, sleeps, fault):
    double.set_persistent("model-a", fault)
    chain = TierChain([make_provider(double.base_url, "a", sleeps, retries=0),
                       make_provider(double.base_url, "b", sleeps)])
    deltas, completion = run(collect(chain.stream(MESSAGES)), chain)

    assert "".join(deltas) == completion.content == "answer from model-b: 5 words"
    assert outcomes(completion.attempts) == [("a", "error"), ("b", "ok")]
    assert [r.model for r in double.requests] == ["model-a", "model-b"]


def test_stream_retries_the_same_provider_before_the_first_token(double, sleeps):
    double.script("model-a", Fault.http_error(503))
    provider = make_provider(double.base_url, "a", sleeps)
    deltas, completion = run(collect(provider.stream(MESSAGES)), provider)

    assert "".join(deltas) == "answer from model-a: 5 words"
    assert outcomes(completion.attempts) == [("a", "error"), ("a", "ok")]
    assert len(double.requests_for("model-a")) == 2


def test_mid_stream_disconnect_interrupts_without_contacting_another_provider(double, sleeps):
    double.set_persistent("model-a", Fault.disconnect_mid_stream(2))
    chain = TierChain([make_provider(double.base_url, "a", sleeps), make_provider(double.base_url, "b", sleeps)])
    deltas: list[str] = []
    with pytest.raises(StreamInterrupted) as raised:
        run(collect_until_error(chain.stream(MESSAGES), deltas), chain)

    assert deltas == ["answer ", "from "]
    interrupted = raised.value
    assert (interrupted.provider, interrupted.tokens_sent) == ("a", 2)
    assert isinstance(interrupted.cause, openai.APIConnectionError)
    assert "broke after 2 text chunks" in str(interrupted)
    assert outcomes(interrupted.attempts) == [("a", "error")]
    assert [r.model for r in double.requests] == ["model-a"]  # no retry, no second provider
    assert chain.providers[0].breaker.consecutive_failures == 1


def test_stream_without_a_key_is_not_configured(double, sleeps, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    chain = TierChain([make_provider(double.base_url, "a", sleeps)])
    with pytest.raises(ProviderNotConfigured, match=KEY_ENV):
        run(collect(chain.stream(MESSAGES)), chain)
    assert double.requests == []


# -- retry policy and classification --

def test_policy_retries_only_retryable_failures():
    policy = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=3.0, max_retry_after_s=5.0)

    def failure(kind: FailureKind, status: int | None = None, retry_after: float | None = None) -> Failure:
        return Failure(kind, "x", status, retry_after)

    full = lambda: 1.0  # noqa: E731 - the top of the jitter range
    assert policy.delay_before_retry(failure(FailureKind.SERVER_ERROR, 500), 1, full) == 1.0
    assert policy.delay_before_retry(failure(FailureKind.TIMEOUT), 2, full) == 2.0
    assert policy.delay_before_retry(failure(FailureKind.CONNECTION), 3, full) is None  # attempts used up
    assert policy.delay_before_retry(failure(FailureKind.RATE_LIMITED, 429, 4.0), 1, full) == 4.0
    assert policy.delay_before_retry(failure(FailureKind.RATE_LIMITED, 429, 9.0), 1, full) is None  # fail over
    assert policy.delay_before_retry(failure(FailureKind.CLIENT_ERROR, 400), 1, full) is None
    assert policy.delay_before_retry(failure(FailureKind.BAD_RESPONSE), 1, full) is None
    assert RetryPolicy(max_attempts=9, base_delay_s=1.0, max_delay_s=3.0).delay_before_retry(
        failure(FailureKind.TIMEOUT), 5, full) == 3.0


def test_retry_after_header_forms():
    now = lambda: 1_700_000_000.0  # noqa: E731
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, now) == pytest.approx(10.0)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "-1"}) is None
    assert retry_after_seconds({"retry-after": "inf"}) is None and retry_after_seconds({"retry-after-ms": "1e400"}) is None
    for past_a_day in ("1e306", "86401", "Fri, 31 Dec 9999 23:59:59 GMT"):
        assert retry_after_seconds({"retry-after": past_a_day}) == 86_400.0
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize("status, retried", [(408, True), (429, True), (500, True), (503, True),
                                             (401, False), (404, False), (422, False)])
def test_which_statuses_are_retried(double, sleeps, status, retried):
    double.script("model-a", Fault.http_error(status))
    provider = make_provider(double.base_url, "a", sleeps, retries=1)

    async def attempt() -> None:
        try:
            await provider.complete(MESSAGES)
        except ProviderFailed:
            pass

    run(attempt(), provider)
    assert len(double.requests_for("model-a")) == (2 if retried else 1)


# -- the double itself --

def test_double_replies_can_be_set_and_reset(double, sleeps):
    double.set_reply("model-a", 'Sure. {"tier": 3}')
    double.script("model-a", Fault.http_error(500))
    provider = make_provider(double.base_url, "a", sleeps)

    async def before_and_after_reset() -> tuple[Completion, tuple[list[str], Completion]]:
        replied = await provider.complete(MESSAGES)
        double.reset()
        assert double.requests == []
        return replied, await collect(provider.stream(MESSAGES))

    replied, (deltas, default) = run(before_and_after_reset(), provider)
    assert replied.content == 'Sure. {"tier": 3}' and outcomes(replied.attempts) == [("a", "error"), ("a", "ok")]
    assert "".join(deltas) == default.content == "answer from model-a: 5 words"
    assert [(r.model, r.stream, r.fault) for r in double.requests] == [("model-a", True, None)]


def test_double_lists_models_and_shuts_down_promptly():
    with ProviderDouble(models=["m1", "m2"]) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key=KEY, max_retries=0, timeout=2.0)
        assert [m.id for m in client.models.list()] == ["m1", "m2"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="m3", messages=MESSAGES)
        running.set_persistent("m1", Fault.hang())
        hung: list[Any] = []
        started = time.monotonic()
        try:
            openai.OpenAI(base_url=running.base_url, api_key=KEY, max_retries=0, timeout=0.2).chat.completions.create(
                model="m1", messages=MESSAGES)
        except openai.APITimeoutError as exc:
            hung.append(exc)
        client.close()
    assert hung and time.monotonic() - started < 2.0  # closing released the hung handler
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=running.base_url, api_key=KEY, max_retries=0, timeout=0.5).models.list()


def test_shadow_drain_cancels_labelling_that_outlives_shutdown_and_logs_it(double, caplog, tmp_path, monkeypatch):
    from router_service.chains import build_chains
    from router_service.config import parse
    from router_service.dispatch import Result
    from router_service.shadow import Shadow
    from router_service.telemetry import RouterMetrics

    from .servers import KEY_ENV as ROUTER_KEY_ENV
    from .servers import router_config

    monkeypatch.setenv(ROUTER_KEY_ENV, "k")
    labels = tmp_path / "live.jsonl"
    cfg = parse(router_config(double.base_url, shadow={"share": 1.0, "labels": str(labels)}))
    double.set_persistent("t3-a", Fault.hang(5.0))  # the frontier answer never comes before shutdown

    async def main() -> Shadow:
        chains = build_chains(cfg, RouterMetrics())
        shadow = Shadow(cfg, chains, RouterMetrics())
        answer = Completion(content="4", provider="t1-a", model="t1-a", input_tokens=5, output_tokens=1)
        try:
            assert shadow.maybe_start(MESSAGES, "heuristic", Result(answer, 1, 0, 1e-6), {})
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await shadow.drain(timeout=0.3)
            assert time.monotonic() - started < 2.0
        finally:
            for chain in chains.values():
                await chain.aclose()
        return shadow

    shadow = asyncio.run(main())
    assert not shadow.tasks and labels.read_text() == "", "opened at start-up, no label written"
    assert "1 still running after 0.3 s at shutdown were cancelled" in caplog.text


def test_a_request_the_asked_providers_all_refused_is_refused_whatever_was_skipped():
    """A provider skipped (its breaker open) was not asked: it says nothing of the request. Those asked all said it
    was invalid, so retrying it elsewhere is futile: refused, not unavailable. A provider that failed otherwise
    (down, timed out) leaves it unavailable."""
    from router_service.dispatch import TierAttempt, Unavailable

    skipped = TierAttempt(1, Attempt("t1-a", "m1", Outcome.SKIPPED_BREAKER_OPEN, error="circuit breaker open"))
    refused = [TierAttempt(t, Attempt(f"t{t}-a", f"m{t}", Outcome.ERROR, error="HTTP 400: bad", status_code=400))
               for t in (2, 3)]
    down = TierAttempt(2, Attempt("t2-b", "m2", Outcome.ERROR, error="connection error: refused"))
    assert Unavailable([skipped, *refused], False).refused
    assert not Unavailable([skipped, down, *refused], False).refused
    assert not Unavailable([skipped], False).refused, "nobody was asked"


def test_a_provider_named_in_two_tiers_shows_each_tiers_breaker():
    """One series per name would let the second tier's closed breaker hide the first's open one from the
    breaker-open alert (max by provider)."""
    from router_service.telemetry import BREAKER_VALUE, RouterMetrics

    first, second = CircuitBreaker("shared", failure_threshold=1), CircuitBreaker("shared", failure_threshold=1)
    metrics = RouterMetrics()
    metrics.track_breakers({(1, "shared"): first, (2, "shared"): second})
    first.record_failure()
    seen = {(o.attributes["tier"], o.attributes["provider"]): o.value for o in metrics._observe_breakers(None)}
    assert seen == {(1, "shared"): BREAKER_VALUE[BreakerState.OPEN], (2, "shared"): BREAKER_VALUE[BreakerState.CLOSED]}
