"""Router configuration: one YAML file, validated at start-up; every problem is reported at once, each line
starting with the key that holds it.

Secrets never live in the file: a provider names the environment variable holding its key
(`api_key_env`), read when a call is made.
"""
from __future__ import annotations

import math
import sys
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import yaml
from pydantic import AfterValidator, Strict, TypeAdapter, ValidationError
from pydantic_core import core_schema

from tierwise.metrics import quality_target
from tierwise.tiers import CHEAPEST, FRONTIER, TIERS, tier_list

from .config_doc import (AtLeastOne, Flag, Int, Megabytes, Name, Positive, Problem, Text, Tier, UniqueKeys, doc,
                         error_lines, must, reference, refuse, schema)
from .config_serving import LimitsConfig, ShutdownConfig, TLSConfig
from .gates import GATES
from .limits import MAX_RPM
from .model_names import MODEL, ModelNames, reserved
from .providers import Completion, ProviderConfig
from .providers.balance import BALANCES
from .providers.types import Price
from .strategies import known, loop_through, registered


class ConfigError(ValueError):
    """Problems in the config file: one line each, starting with the key path."""


def finite_non_negative(rule: str) -> Any:
    """A float that is finite and >= 0, refused with `rule` otherwise."""
    return Annotated[float, Strict(), must(lambda v: math.isfinite(v) and v >= 0, rule)]


NoLimit = finite_non_negative("must be 0 (no limit) or more")
OffOrMore = finite_non_negative("must be 0 (off) or more")
BalanceName = Annotated[str, Strict(), must(lambda v: v in BALANCES, f"must be one of {', '.join(BALANCES)}")]


@schema
class TierConfig:
    tier: Tier = doc("1 (cheap), 2 (mid) or 3 (frontier); each exactly once")
    price_per_mtok: Price = doc("what the tier's answers cost, unless the provider that gave one sets its own",
                                nested=Price)
    providers: Annotated[tuple[ProviderConfig, ...], must(len, "required, a non-empty list (the tier's fallback "
                                                              "chain in order)")] = doc(
        "the tier's providers: its fallback chain, tried in order (with a `balance` other than order, each request "
        "starts where the balance says and the rest follow)", nested=ProviderConfig, many=True)
    balance: BalanceName = doc(
        "which provider a request asks first: order (the first; the rest are its fallbacks), round_robin (each in "
        "turn, by the providers' `weight`), least_busy (the one with the fewest of this router's requests under "
        "way) or fastest (the shortest recent time to first token; every 20th request goes round, to measure "
        "again). The others stay fallbacks; round_robin, least_busy and fastest ask a provider whose breaker is "
        "open last", "order")
    hedge_after_ms: OffOrMore = doc(
        "when a provider has not sent its first token (its answer, unstreamed) this long, also ask the next one in "
        "the chain and take whichever answers first, closing the other (the provider may still bill what it began); "
        "0 = off: the next provider is asked only after a failure", 0.0)

    def price(self, provider: str | None = None) -> Price:
        """What an answer from `provider` (by name) costs; None = the first provider's, as estimates assume."""
        chosen = next((p for p in self.providers if p.name == provider), self.providers[0])
        return chosen.price_per_mtok or self.price_per_mtok

    def cost(self, input_tokens: int, output_tokens: int, provider: str | None = None, cached_tokens: int = 0) -> float:
        """USD for an answer from `provider` (by name); None = the first provider, as estimates assume."""
        return self.price(provider).cost(input_tokens, output_tokens, cached_tokens)

    def answer_cost(self, c: Completion) -> float:
        """USD for answer `c`, at the price of the provider that gave it."""
        return self.cost(c.input_tokens, c.output_tokens, c.provider, c.cached_input_tokens)


class Tiers(dict[int, TierConfig]):
    """The tiers by number; in the file, a list naming each tier exactly once."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(cls._validate, handler(list[TierConfig]))

    @classmethod
    def _validate(cls, value: Any, as_list: Any) -> Tiers:
        if isinstance(value, cls):
            return value
        listed: list[TierConfig] = as_list(value)
        if not listed:
            refuse([((), f"required, a list of tiers {CHEAPEST}..{FRONTIER}")])
        problems: list[Problem] = []
        seen: set[int] = set()
        for i, t in enumerate(listed):
            if t.tier in seen:
                problems.append(((i, "tier"), f"tier {t.tier} is defined twice"))
            seen.add(t.tier)
            names = [p.name for p in t.providers]
            for j, name in enumerate(names):
                if name in names[:j]:  # an answer is billed, and its breaker counted, by provider name
                    problems.append(((i, "providers", j, "name"), f"provider {name!r} is named twice in this tier"))
        if missing := [t for t in TIERS if t not in seen]:
            problems.append(((), f"tier(s) {missing} missing; define tiers {tier_list().replace(' or ', ' and ')}"))
        refuse(problems)
        return cls((t.tier, t) for t in listed)


def _known_gate(name: str) -> str:
    if name not in GATES:
        refuse([((), f"unknown gate {name!r}; available: {', '.join(sorted(GATES))}")])
    return name


def _known_strategy(name: str) -> str:
    if not known(name):
        refuse([((), f"unknown strategy {name!r}; available: {', '.join(registered())} or START+cascade")])
    return name


StrategyName = Annotated[str, Strict(), AfterValidator(_known_strategy)]
Share = Annotated[float, Strict(), must(lambda v: 0 <= v <= 1, "must be between 0 and 1")]


@schema
class ClassifierConfig:
    address: Name = doc("classifier service host:port, or unix:PATH on the same machine (--classifier overrides)",
                        "127.0.0.1:50051")
    timeout_ms: Positive = doc("budget for the classifier hop; past it the router degrades to heuristic (within a "
                               "caller's deadline, past 90 % of the time it has left less 2 ms)", 50.0)
    head: Text = doc("classifier head (\"\" = the head trained on this router's lineup, each tier's first model, "
                     "if the classifier serves one, else the classifier's default)", "")
    head_refresh_s: Positive = doc("how often the router asks the classifier for the head trained on its lineup, "
                                   "when `head` is \"\"", 30.0)
    keep_warm_ms: OffOrMore = doc("when no classifier call has gone out for this long, the router sends the classifier "
                                "a health check, and again every as long while idle, so a call after a quiet spell "
                                "finds both ends' gRPC paths warm (0 = off; docs/decisions/0032)", 0.0)
    tls_ca: Text = doc("PEM CA bundle the classifier's certificate chains to: reach it over TLS (\"\" = plaintext; "
                       "--classifier-tls-ca)", "")
    tls_cert: Text = doc("PEM client certificate for a classifier that requires one (mTLS; --classifier-tls-cert)", "")
    tls_key: Text = doc("PEM private key of `tls_cert` (--classifier-tls-key)", "")


@schema
class JudgeConfig:
    tier: Tier = doc("tier whose chain answers the judge prompt", CHEAPEST)
    timeout_ms: Positive = doc("judge budget; past it the fallback strategy decides", 3000.0)
    fallback: StrategyName = doc("strategy used when the judge fails or times out", "heuristic")
    bias: Int = doc(f"tiers added to the judge's verdict, kept within {CHEAPEST} to {FRONTIER}: above 0 toward "
                    "quality, below 0 toward cost", 0)


@schema
class CascadeConfig:
    start: StrategyName = doc("strategy choosing the first tier for plain `cascade`", "embedding")
    gate: Annotated[str, Strict(), AfterValidator(_known_gate)] = doc(
        "quality gate run on each answer: surface, the seed's heuristic, or verify (surface, then a model judges the "
        "answer)", "surface")
    max_tier: Tier = doc("highest tier a cascade answers at: it starts no higher (unless the conversation needs "
                         "it) and neither its gate nor its failover goes further", FRONTIER)
    verifier_tier: Annotated[int, Strict(), must(lambda v: v in (0, *TIERS), "must be 0 (the tier above the answer's), "
                                                 f"{tier_list()}")] = doc(
        "tier whose chain judges answers for the verify gate (0 = the tier above the answer's)", CHEAPEST)
    verifier_timeout_ms: Positive = doc("budget for each verifier call; past it the answer is rejected and the "
                                        "cascade escalates", 5000.0)
    start_tradeoff: finite_non_negative("must be null or a finite number >= 0") | None = doc(
        "the embedding start decides at this tradeoff instead of its head's calibrated one (null = the head's): with "
        "a verify gate restoring quality, the cascade can start cheaper; `tierwise calibrate --config` chooses it "
        "with the bar", None)
    verifier_bar: Share = doc("the verify gate accepts an answer when the verifier's P(acceptable) is at least this "
                              "(0..1); `tierwise calibrate --config` measures which bar meets a quality target", 0.5)
    # OpenAI's top_logprobs allows 0..20
    verifier_logprobs: Annotated[int, Strict(), must(lambda v: 0 <= v <= 20, "must be between 0 and 20")] = doc(
        "alternatives per token the verifier's provider is asked for (`top_logprobs`), from which P(acceptable) is "
        "read; 0 = do not ask (for providers that refuse it): P is then 1 or 0, the verdict itself", 5)


@schema
class ShadowConfig:
    share: Share = doc("share (0..1) of answered requests below `tier` (of all, with `labels`) shadowed in the "
                       "background", 0.0)
    tier: Tier = doc("tier of the shadow (reference) answer", FRONTIER)
    judge_tier: Tier = doc("tier whose chain judges the answers", CHEAPEST)
    timeout_s: Positive = doc("budget for each provider call a shadow makes", 60.0)
    max_in_flight: AtLeastOne = doc("shadows running at once; more are dropped and counted", 16)
    log: Text = doc("JSONL file of comparisons (\"\" = metrics and spans only; `{host}` = the host name)", "")
    labels: Text = doc("JSONL file of routing records labelled from sampled traffic, for `tierwise train`; "
                       "holds prompts and answers in clear (\"\" = off; `{host}` = the host name)", "")
    monthly_budget_usd: NoLimit = doc("USD the shadow may spend on providers in a calendar month (UTC), kept in the "
                                      "spend ledger (`spend.ledger`); past it no shadow starts until the month ends "
                                      "(0 = no limit)", 0.0)

    def __post_init__(self) -> None:
        if self.labels and self.tier != FRONTIER:
            refuse([(("tier",), f"must be {FRONTIER} when shadow.labels is set (labels score every tier against "
                                f"tier {FRONTIER}), not {self.tier}")])


@schema
class AuthConfig:
    api_keys_file: Text = doc("file of accepted API keys, one a line (see API keys, below the table); \"\" = every call "
                              "is accepted (--api-keys-file)", "")
    reload_s: Positive = doc("how often the keys file is checked for changes, taken up without a restart (SIGHUP "
                             "checks at once)", 10.0)
    requests_per_minute: Annotated[int, Strict(), must(lambda v: 0 <= v <= MAX_RPM,
                                                       f"must be 0 (no limit) to {MAX_RPM}")] = doc(
        "each key's rate limit, unless its line sets `rpm=` (0 = none)", 0)
    monthly_usd: NoLimit = doc("each key's spend limit per calendar month (UTC), in USD of provider cost, unless its "
                               "line sets `monthly_usd=` (0 = none); kept in the spend ledger (`spend.ledger`)", 0.0)


@schema
class SpendConfig:
    ledger: Text = doc("file keeping this month's provider spend per key and the shadow's, so a restart resumes the "
                       "count; `{host}` = the host name, and every file the path matches with `{host}` read as `*` "
                       "is another replica's, whose spend this month counts too (\"\" = this process's memory: each "
                       "replica counts from zero since it started)", "")
    sync_s: Positive = doc("how often the ledger file is written (while spend changes) and the other replicas' files "
                           "re-read: how late one replica sees another's spend", 5.0)


def _model_name(name: str) -> str:
    if reserved(name):
        refuse([((), f"{name!r} is the router's own name; list names clients send besides {MODEL!r}")])
    return name


def _quality_target(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        return quality_target(value)
    except ValueError as err:
        refuse([((), str(err))])


def _distinct_names(models: tuple) -> tuple:
    names = [m.name for m in models]
    refuse([((i, "name"), f"{name!r} is listed twice") for i, name in enumerate(names) if name in names[:i]])
    return models


@schema
class ModelName:
    name: Annotated[Name, AfterValidator(_model_name)] = doc(
        "a model name the HTTP API takes besides `tierwise` and `tierwise/<strategy>`: exact (`gpt-4o`) or a "
        "pattern where `*` is any run of characters (`claude-*`, `*`); the first entry that matches decides")
    strategy: Annotated[str, Strict(), AfterValidator(lambda v: v and _known_strategy(v))] = doc(
        "the strategy it routes with, as in `tierwise/<strategy>`: `tier1`..`tier3` pin a tier (\"\" = the "
        "configured one)", "")
    quality_target: Annotated[float | None, Strict(), AfterValidator(_quality_target)] = doc(
        "the quality vs frontier it is held to: the head's tradeoff calibrated for it, such as 0.9 for an app "
        "that can give up more quality for cost (null = the head's default; a request's own `quality_target` "
        "wins)", None)


@schema
class HTTPConfig:
    listen: Text = doc("host:port of the HTTP API (OpenAI's /v1/chat/completions, /v1/responses, /v1/models; Anthropic's "
                       "/v1/messages), "
                       "served beside gRPC by the same process (\"\" = off; --http-listen)", "")
    models: Annotated[tuple[ModelName, ...], AfterValidator(_distinct_names)] = doc(
        "model names clients may send", (), nested=ModelName, many=True)
    body_timeout_s: Positive = doc("longest wait for the next piece of a request's body (past it a 408), and for "
                                   "its headers whole (past it the connection is closed): none holds one open", 30.0)

    def model_names(self) -> ModelNames:
        return ModelNames(tuple((m.name, m.strategy, m.quality_target) for m in self.models))


@schema
class CacheConfig:
    max_entries: Annotated[int, Strict(), must(lambda v: v >= 0, "must be 0 (off) or more")] = doc(
        "answers kept for requests asked again (same conversation, options, strategy and API key), least recently "
        "used out first; only requests asking for a deterministic answer (temperature 0, or a seed) are kept or "
        "served; a hit asks no provider and costs nothing (0 = off)", 0)
    ttl_s: Positive = doc("how long a kept answer may be served", 300.0)


@schema
class IdempotencyConfig:
    max_mb: Megabytes = doc(
        "answers kept for retries of Complete calls that carried an idempotency key (a retry with the same key and "
        "request gets the answer, or waits for the work under way, and pays nothing again), in MB held: each answer "
        "as serialized, its key and about 400 bytes besides; least recently used out first; work under way is never "
        "pushed out", 64.0)
    ttl_s: Positive = doc("how long an answer is kept for a retry", 600.0)
    retry_window_s: Positive = doc(
        "how long work goes on after its caller left, unless a retry comes for it (a caller that cancelled sends "
        "none); never past the call's deadline", 10.0)
    shared_dir: Text = doc(
        "a directory every router replica mounts (the labels or ledger volume): the keys and answers are kept there "
        "too, so a retry that reaches another replica waits for the work or gets its answer instead of paying again; "
        "the answers' files hold their text, mode 0600 (\"\" = each replica keeps its own)", "")


@schema
class AffinityConfig:
    ttl_s: OffOrMore = doc(
        "for this long after a conversation's last turn, its later turns are answered at no lower tier than its "
        "earlier ones, by the provider that answered them when it can: a conversation that changes model loses its "
        "prompt cache (0 = off)", 0.0)
    max_entries: AtLeastOne = doc("conversations remembered, least recently used out first", 100_000)


@schema
class TelemetryConfig:
    record_content: Flag = doc("record prompt and answer text in spans (never, unless true)", False)
    access_log: Flag = doc("log a line for each gRPC and HTTP API call: method, code, latency, key id, strategy, tier, "
                           "model, tokens and cost; never prompt text or a key (logger tierwise.router.access)", False)


@schema
class RouterConfig:
    tiers: Tiers = doc("tiers 1, 2 and 3", nested=TierConfig, many=True)
    strategy: StrategyName = doc("default strategy: heuristic, embedding, judge, cheapest (always tier 1), tier1, "
                         "tier2 or tier3 (always that tier), cascade or START+cascade", "embedding")
    classifier: ClassifierConfig = doc("the classifier hop", factory=ClassifierConfig, nested=ClassifierConfig)
    judge: JudgeConfig = doc("LLM-as-judge strategy", factory=JudgeConfig, nested=JudgeConfig)
    cascade: CascadeConfig = doc("cascade strategy", factory=CascadeConfig, nested=CascadeConfig)
    shadow: ShadowConfig = doc("shadow A/B", factory=ShadowConfig, nested=ShadowConfig)
    limits: LimitsConfig = doc("request limits and admission control", factory=LimitsConfig, nested=LimitsConfig)
    expected_output_tokens: Annotated[int, Strict(), must(lambda v: v >= 0, "must be 0 or more")] = doc(
        "output tokens assumed by Route's cost estimate", 300)
    cache: CacheConfig = doc("the answer cache", factory=CacheConfig, nested=CacheConfig)
    idempotency: IdempotencyConfig = doc("retries that pay once", factory=IdempotencyConfig,
                                         nested=IdempotencyConfig)
    affinity: AffinityConfig = doc("conversation affinity", factory=AffinityConfig, nested=AffinityConfig)
    telemetry: TelemetryConfig = doc("spans", factory=TelemetryConfig, nested=TelemetryConfig)
    tls: TLSConfig = doc("the router's own listener", factory=TLSConfig, nested=TLSConfig)
    auth: AuthConfig = doc("API keys and per-key limits", factory=AuthConfig, nested=AuthConfig)
    spend: SpendConfig = doc("where the monthly spend limits are counted", factory=SpendConfig, nested=SpendConfig)
    http: HTTPConfig = doc("the OpenAI-compatible HTTP API", factory=HTTPConfig, nested=HTTPConfig)
    shutdown: ShutdownConfig = doc("stopping on SIGTERM", factory=ShutdownConfig, nested=ShutdownConfig)

    def __post_init__(self) -> None:
        # A loop would recurse without end the first time a call named either strategy.
        starts = {"judge": self.judge.fallback, "cascade": self.cascade.start}
        for name, setting in (("judge", ("judge", "fallback")), ("cascade", ("cascade", "start"))):
            if loop := loop_through(name, starts):
                refuse([(setting, f"leads back to {name}: {' -> '.join(loop)}")])

    @property
    def record_content(self) -> bool:
        return self.telemetry.record_content

    def model_for(self, tier: int) -> str:
        return self.tiers[tier].providers[0].model

    def lineup(self) -> tuple[str, ...]:
        """Each tier's first model, cheapest first: the lineup a classifier head is trained on."""
        return tuple(self.model_for(t) for t in TIERS)


_SCHEMA = TypeAdapter(RouterConfig)
_SECTIONS = {f.name for f in fields(RouterConfig) if is_dataclass(get_type_hints(RouterConfig)[f.name])}


def load(path: str | Path) -> RouterConfig:
    try:
        raw = yaml.load(Path(path).read_text(), Loader=UniqueKeys)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None  # one line
    return parse(raw)


def parse(raw: Any) -> RouterConfig:
    """The config in `raw` (the YAML file's content); ConfigError naming every problem, one a line. A section left
    empty (`shutdown:` with its keys commented out, YAML's null) takes its defaults, as if it were absent."""
    if isinstance(raw, dict):
        raw = {key: value for key, value in raw.items() if value is not None or key not in _SECTIONS}
    try:
        return _SCHEMA.validate_python(raw)
    except ValidationError as err:
        raise ConfigError("\n".join(error_lines(err, RouterConfig))) from None


def with_settings(cfg: RouterConfig, settings: dict[str, str | None]) -> RouterConfig:
    """`cfg` with settings from flags or the environment (dotted keys, "tls.cert") in place of the file's;
    None leaves the file's value."""
    for dotted, value in settings.items():
        if value is not None:
            section, name = dotted.split(".")
            try:
                cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
            except ValidationError as err:
                raise ConfigError("\n".join(error_lines(err, RouterConfig, (section,)))) from None
    return cfg


if __name__ == "__main__":
    sys.stdout.write(reference(RouterConfig))
