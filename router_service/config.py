"""Router configuration: one YAML file, validated at start-up with errors that name the key.

Secrets never live in the file: a provider names the environment variable holding its key
(`api_key_env`), read when a call is made.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from tierwise.tiers import CHEAPEST, FRONTIER, TIERS, tier_list

from .config_doc import doc
from .gates import GATES
from .providers import ProviderConfig


class ConfigError(ValueError):
    """A problem in the config file; the message starts with the key path."""


@dataclass(frozen=True)
class TierConfig:
    tier: int = doc("1 (cheap), 2 (mid) or 3 (frontier); each exactly once")
    input_per_mtok: float = doc("USD per million input tokens", key="price_per_mtok.input")
    output_per_mtok: float = doc("USD per million output tokens", key="price_per_mtok.output")
    providers: tuple[ProviderConfig, ...] = doc("the tier's fallback chain, tried in order",
                                                nested=ProviderConfig, many=True)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class ClassifierConfig:
    address: str = doc("classifier service host:port (--classifier overrides)", "127.0.0.1:50051")
    timeout_ms: float = doc("budget for the classifier hop; past it the router degrades to heuristic", 50.0)
    head: str = doc("classifier head (\"\" = the head trained on this router's lineup, each tier's first model, "
                    "if the classifier serves one, else the classifier's default)", "")
    head_refresh_s: float = doc("how often the router asks the classifier for the head trained on its lineup, when "
                                "`head` is \"\"", 30.0)
    tls_ca: str = doc("PEM CA bundle the classifier's certificate chains to: reach it over TLS (\"\" = plaintext; "
                      "--classifier-tls-ca)", "")
    tls_cert: str = doc("PEM client certificate for a classifier that requires one (mTLS; --classifier-tls-cert)", "")
    tls_key: str = doc("PEM private key of `tls_cert` (--classifier-tls-key)", "")


@dataclass(frozen=True)
class JudgeConfig:
    tier: int = doc("tier whose chain answers the judge prompt", CHEAPEST)
    timeout_ms: float = doc("judge budget; past it the fallback strategy decides", 3000.0)
    fallback: str = doc("strategy used when the judge fails or times out", "heuristic")
    bias: int = doc(f"tiers added to the judge's verdict (capped at {FRONTIER}), toward quality", 0)


@dataclass(frozen=True)
class CascadeConfig:
    start: str = doc("strategy choosing the first tier for plain `cascade`", "embedding")
    gate: str = doc("quality gate run on each answer: surface, the seed's heuristic, or verify (surface, then a "
                    "model judges the answer)", "surface")
    max_tier: int = doc("highest tier the gate may escalate to", FRONTIER)
    verifier_tier: int = doc("tier whose chain judges answers for the verify gate (0 = the tier above the answer's)",
                             CHEAPEST)
    verifier_timeout_ms: float = doc("budget for each verifier call; past it the answer is rejected and the cascade "
                                     "escalates", 5000.0)
    start_tradeoff: float | None = doc("the embedding start decides at this tradeoff instead of its head's calibrated "
                                       "one (null = the head's): with a verify gate restoring quality, the cascade "
                                       "can start cheaper; `tierwise calibrate --config` chooses it with the bar", None)
    verifier_bar: float = doc("the verify gate accepts an answer when the verifier's P(acceptable) is at least this "
                              "(0..1); `tierwise calibrate --config` measures which bar meets a quality target", 0.5)
    verifier_logprobs: int = doc("alternatives per token the verifier's provider is asked for (`top_logprobs`), from "
                                 "which P(acceptable) is read; 0 = do not ask (for providers that refuse it): P is "
                                 "then 1 or 0, the verdict itself", 5)


@dataclass(frozen=True)
class ShadowConfig:
    share: float = doc("share (0..1) of answered requests below `tier` (of all, with `labels`) shadowed in the "
                       "background", 0.0)
    tier: int = doc("tier of the shadow (reference) answer", FRONTIER)
    judge_tier: int = doc("tier whose chain judges the answers", CHEAPEST)
    timeout_s: float = doc("budget for each provider call a shadow makes", 60.0)
    max_in_flight: int = doc("shadows running at once; more are dropped and counted", 16)
    log: str = doc("JSONL file of comparisons (\"\" = metrics and spans only; `{host}` = the host name)", "")
    labels: str = doc("JSONL file of routing records labelled from sampled traffic, for `tierwise train`; "
                      "holds prompts and answers in clear (\"\" = off; `{host}` = the host name)", "")
    monthly_budget_usd: float = doc("USD the shadow may spend on providers in a calendar month (UTC), counted by "
                                    "each router process since it started; past it no shadow starts until the "
                                    "month ends (0 = no limit)", 0.0)


@dataclass(frozen=True)
class TLSConfig:
    cert: str = doc("PEM certificate the router serves TLS with (\"\" = plaintext; --tls-cert); re-read when it "
                    "changes", "")
    key: str = doc("PEM private key of `cert` (--tls-key)", "")
    client_ca: str = doc("PEM CA bundle: clients must present a certificate it signed (mTLS; --tls-client-ca)", "")


@dataclass(frozen=True)
class AuthConfig:
    api_keys_file: str = doc("file of accepted API keys, one a line (see the README's API keys); \"\" = every call "
                             "is accepted (--api-keys-file)", "")
    reload_s: float = doc("how often the keys file is checked for changes, taken up without a restart (SIGHUP "
                          "checks at once)", 10.0)
    requests_per_minute: int = doc("each key's rate limit, unless its line sets `rpm=` (0 = none)", 0)
    monthly_usd: float = doc("each key's spend limit per calendar month (UTC), in USD of provider cost, unless its "
                             "line sets `monthly_usd=` (0 = none)", 0.0)


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = doc("host:port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models), served beside "
                      "gRPC by the same process (\"\" = off; --http-listen)", "")


@dataclass(frozen=True)
class LimitsConfig:
    max_in_flight: int = doc("Route, Complete and CompleteStream calls served at once; past it a call gets "
                             "RESOURCE_EXHAUSTED at once", 1024)
    max_messages: int = doc("messages in one Complete or CompleteStream request", 256)
    max_message_bytes: int = doc("UTF-8 bytes of one message's content, and of Route's query", 256 * 1024)
    max_total_bytes: int = doc("UTF-8 bytes of all of a request's messages together", 1024 * 1024)


@dataclass(frozen=True)
class RouterConfig:
    tiers: dict[int, TierConfig] = doc("tiers 1, 2 and 3", nested=TierConfig, many=True)
    strategy: str = doc("default strategy: heuristic, embedding, judge, cheapest (always tier 1), cascade or "
                        "START+cascade", "embedding")
    classifier: ClassifierConfig = doc("the classifier hop", factory=ClassifierConfig, nested=ClassifierConfig)
    judge: JudgeConfig = doc("LLM-as-judge strategy", factory=JudgeConfig, nested=JudgeConfig)
    cascade: CascadeConfig = doc("cascade strategy", factory=CascadeConfig, nested=CascadeConfig)
    shadow: ShadowConfig = doc("shadow A/B", factory=ShadowConfig, nested=ShadowConfig)
    limits: LimitsConfig = doc("request limits and admission control", factory=LimitsConfig, nested=LimitsConfig)
    expected_output_tokens: int = doc("output tokens assumed by Route's cost estimate", 300)
    record_content: bool = doc("record prompt and answer text in spans (never, unless true)", False,
                               key="telemetry.record_content")
    tls: TLSConfig = doc("the router's own listener", factory=TLSConfig, nested=TLSConfig)
    auth: AuthConfig = doc("API keys and per-key limits", factory=AuthConfig, nested=AuthConfig)
    http: HTTPConfig = doc("the OpenAI-compatible HTTP API", factory=HTTPConfig, nested=HTTPConfig)

    def model_for(self, tier: int) -> str:
        return self.tiers[tier].providers[0].model

    def lineup(self) -> tuple[str, ...]:
        """Each tier's first model, cheapest first: the lineup a classifier head is trained on."""
        return tuple(self.model_for(t) for t in TIERS)


def reference() -> str:
    """The configuration reference as a Markdown table, generated from the dataclasses above."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            key = prefix + (f.metadata.get("key") or f.name)
            nested = f.metadata.get("nested")
            if nested is not None:
                walk(nested, key + ("[]." if f.metadata["many"] else "."))
                continue
            default = "required" if f.default is MISSING else f"`{json.dumps(f.default)}`"
            rows.append(f"| `{key}` | {default} | {f.metadata['doc']} |")

    walk(RouterConfig, "")
    return "\n".join(rows) + "\n"


def load(path: str | Path) -> RouterConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse(raw)


def parse(raw: Any) -> RouterConfig:
    top = _mapping(raw, "(top level)")
    _known(top, "", {"strategy", "tiers", "classifier", "judge", "cascade", "shadow", "limits", "expected_output_tokens",
                     "telemetry", "tls", "auth", "http"})
    tiers_raw = top.get("tiers")
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise ConfigError(f"tiers: required, a list of tiers {CHEAPEST}..{FRONTIER}")
    tiers: dict[int, TierConfig] = {}
    for i, t in enumerate(tiers_raw):
        tier = _tier(t, f"tiers[{i}]")
        if tier.tier in tiers:
            raise ConfigError(f"tiers[{i}].tier: tier {tier.tier} is defined twice")
        tiers[tier.tier] = tier
    missing = [t for t in TIERS if t not in tiers]
    if missing:
        raise ConfigError(f"tiers: tier(s) {missing} missing; define tiers 1, 2 and 3")
    telemetry = _mapping(top.get("telemetry", {}), "telemetry")
    _known(telemetry, "telemetry", {"record_content"})
    judge = JudgeConfig(**_section(top, "judge", JudgeConfig))
    cascade = CascadeConfig(**_section(top, "cascade", CascadeConfig))
    if judge.tier not in TIERS:
        raise ConfigError(f"judge.tier: must be {tier_list()}, not {judge.tier}")
    if cascade.max_tier not in TIERS:
        raise ConfigError(f"cascade.max_tier: must be {tier_list()}, not {cascade.max_tier}")
    if cascade.gate not in GATES:
        raise ConfigError(f"cascade.gate: unknown gate {cascade.gate!r}; available: {', '.join(sorted(GATES))}")
    if cascade.verifier_tier not in (0, *TIERS):
        raise ConfigError(f"cascade.verifier_tier: must be 0 (the tier above the answer's), {tier_list()}, "
                          f"not {cascade.verifier_tier}")
    if not cascade.verifier_timeout_ms > 0:
        raise ConfigError(f"cascade.verifier_timeout_ms: must be positive, not {cascade.verifier_timeout_ms}")
    if cascade.start_tradeoff is not None and not (math.isfinite(cascade.start_tradeoff) and cascade.start_tradeoff >= 0):
        raise ConfigError(f"cascade.start_tradeoff: must be null or a finite number >= 0, not {cascade.start_tradeoff}")
    if not 0 <= cascade.verifier_bar <= 1:
        raise ConfigError(f"cascade.verifier_bar: must be between 0 and 1, not {cascade.verifier_bar}")
    if not 0 <= cascade.verifier_logprobs <= 20:  # OpenAI's top_logprobs allows 0..20
        raise ConfigError(f"cascade.verifier_logprobs: must be between 0 and 20, not {cascade.verifier_logprobs}")
    shadow = ShadowConfig(**_section(top, "shadow", ShadowConfig))
    if not 0 <= shadow.share <= 1:
        raise ConfigError(f"shadow.share: must be between 0 and 1, not {shadow.share}")
    for key in ("tier", "judge_tier"):
        if getattr(shadow, key) not in TIERS:
            raise ConfigError(f"shadow.{key}: must be {tier_list()}, not {getattr(shadow, key)}")
    if shadow.labels and shadow.tier != FRONTIER:
        raise ConfigError(f"shadow.tier: must be {FRONTIER} when shadow.labels is set (labels score every tier "
                          f"against tier {FRONTIER}), not {shadow.tier}")
    if shadow.max_in_flight < 1 or shadow.timeout_s <= 0:
        raise ConfigError("shadow.max_in_flight: must be at least 1" if shadow.max_in_flight < 1
                          else "shadow.timeout_s: must be positive")
    if not (math.isfinite(shadow.monthly_budget_usd) and shadow.monthly_budget_usd >= 0):
        raise ConfigError(f"shadow.monthly_budget_usd: must be 0 (no limit) or more, not {shadow.monthly_budget_usd}")
    limits = LimitsConfig(**_section(top, "limits", LimitsConfig))
    for key in vars(limits):
        if getattr(limits, key) < 1:
            raise ConfigError(f"limits.{key}: must be at least 1, not {getattr(limits, key)}")
    if limits.max_message_bytes > limits.max_total_bytes:
        raise ConfigError(f"limits.max_message_bytes: must not exceed limits.max_total_bytes ({limits.max_total_bytes})")
    classifier = ClassifierConfig(**_section(top, "classifier", ClassifierConfig))
    for key in ("timeout_ms", "head_refresh_s"):
        if not getattr(classifier, key) > 0:  # also refuses nan
            raise ConfigError(f"classifier.{key}: must be positive, not {getattr(classifier, key)}")
    auth = AuthConfig(**_section(top, "auth", AuthConfig))
    if not auth.reload_s > 0:
        raise ConfigError(f"auth.reload_s: must be positive, not {auth.reload_s}")
    for key in ("requests_per_minute", "monthly_usd"):
        if not getattr(auth, key) >= 0:
            raise ConfigError(f"auth.{key}: must be 0 (no limit) or more, not {getattr(auth, key)}")
    return RouterConfig(
        strategy=_str(top.get("strategy", RouterConfig.strategy), "strategy"),
        tiers=tiers,
        classifier=classifier,
        judge=judge,
        cascade=cascade,
        shadow=shadow,
        limits=limits,
        expected_output_tokens=_int(top.get("expected_output_tokens", RouterConfig.expected_output_tokens), "expected_output_tokens"),
        record_content=_bool(telemetry.get("record_content", RouterConfig.record_content), "telemetry.record_content"),
        tls=TLSConfig(**_section(top, "tls", TLSConfig)),
        auth=auth,
        http=HTTPConfig(**_section(top, "http", HTTPConfig)),
    )


def with_settings(cfg: RouterConfig, settings: dict[str, str | None]) -> RouterConfig:
    """`cfg` with settings from flags or the environment (dotted keys, "tls.cert") in place of the file's;
    None leaves the file's value."""
    for dotted, value in settings.items():
        if value is not None:
            section, name = dotted.split(".")
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    return cfg


def _tier(raw: Any, at: str) -> TierConfig:
    t = _mapping(raw, at)
    _known(t, at, {"tier", "price_per_mtok", "providers"})
    tier = _int(t.get("tier"), f"{at}.tier")
    if tier not in TIERS:
        raise ConfigError(f"{at}.tier: must be {tier_list()}, not {tier}")
    price = _mapping(t.get("price_per_mtok"), f"{at}.price_per_mtok")
    _known(price, f"{at}.price_per_mtok", {"input", "output"})
    providers = t.get("providers")
    if not isinstance(providers, list) or not providers:
        raise ConfigError(f"{at}.providers: required, a non-empty list (the tier's fallback chain in order)")
    return TierConfig(
        tier=tier,
        input_per_mtok=_price(price.get("input"), f"{at}.price_per_mtok.input"),
        output_per_mtok=_price(price.get("output"), f"{at}.price_per_mtok.output"),
        providers=tuple(_provider(p, f"{at}.providers[{j}]") for j, p in enumerate(providers)),
    )


def _provider(raw: Any, at: str) -> ProviderConfig:
    p = _mapping(raw, at)
    _known(p, at, {"name", "base_url", "model", "api_key_env", "timeout_s", "max_retries", "api_key",
                   "breaker_failures", "breaker_cooldown_s", "context_window"})
    if "api_key" in p:
        raise ConfigError(f"{at}.api_key: secrets do not belong in the file; set api_key_env to the name of "
                          "an environment variable holding the key")
    base_url = _str(p.get("base_url"), f"{at}.base_url")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.base_url: must start with http:// or https://, got {base_url!r}")
    timeout = _number(p.get("timeout_s", ProviderConfig.timeout_s), f"{at}.timeout_s")
    if timeout <= 0:
        raise ConfigError(f"{at}.timeout_s: must be positive")
    retries = _int(p.get("max_retries", ProviderConfig.max_retries), f"{at}.max_retries")
    if retries < 0:
        raise ConfigError(f"{at}.max_retries: must be 0 or more")
    failures = _int(p.get("breaker_failures", ProviderConfig.breaker_failures), f"{at}.breaker_failures")
    if failures < 1:
        raise ConfigError(f"{at}.breaker_failures: must be at least 1")
    cooldown = _number(p.get("breaker_cooldown_s", ProviderConfig.breaker_cooldown_s), f"{at}.breaker_cooldown_s")
    if cooldown < 0:
        raise ConfigError(f"{at}.breaker_cooldown_s: must be 0 or more")
    window = _int(p.get("context_window", ProviderConfig.context_window), f"{at}.context_window")
    if window < 0:
        raise ConfigError(f"{at}.context_window: must be 0 (not checked) or a number of tokens")
    return ProviderConfig(name=_str(p.get("name"), f"{at}.name"), base_url=base_url,
                          model=_str(p.get("model"), f"{at}.model"),
                          api_key_env=_str(p.get("api_key_env", ""), f"{at}.api_key_env", required=False),
                          timeout_s=timeout, max_retries=retries, breaker_failures=failures,
                          breaker_cooldown_s=cooldown, context_window=window)


def _section(doc: dict, key: str, cls) -> dict:
    section = _mapping(doc.get(key, {}), key)
    defaults = cls()
    _known(section, key, set(vars(defaults)))
    out = {}
    for name, value in section.items():
        default = getattr(defaults, name)
        if isinstance(default, str):
            out[name] = _str(value, f"{key}.{name}", required=bool(default))
        elif default is None and value is None:  # an optional number left unset
            out[name] = None
        else:
            out[name] = (_int if isinstance(default, int) else _number)(value, f"{key}.{name}")
    return out


def _known(mapping: dict, at: str, allowed: set[str]) -> None:
    for key in mapping:
        if key not in allowed:
            where = f"{at}.{key}" if at else str(key)
            raise ConfigError(f"{where}: unknown key; expected one of {sorted(allowed)}")


def _mapping(value: Any, at: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{at}: expected a mapping, got {type(value).__name__}")
    return value


def _str(value: Any, at: str, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(f"{at}: required, a non-empty string")
    return value


def _int(value: Any, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{at}: expected an integer, got {value!r}")
    return value


def _number(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{at}: expected a number, got {value!r}")
    return float(value)


def _price(value: Any, at: str) -> float:
    price = _number(value, at)
    if price < 0:
        raise ConfigError(f"{at}: must not be negative")
    return price


def _bool(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{at}: expected true or false, got {value!r}")
    return value


if __name__ == "__main__":
    sys.stdout.write(reference())
