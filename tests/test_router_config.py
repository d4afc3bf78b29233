"""Router config validation: every problem of a file is reported in one run, each with the key that holds it."""
from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from router_service.config import ConfigError, load, parse, with_settings

from .servers import ROOT

EXAMPLE = yaml.safe_load((ROOT / "tierwise.example.yaml").read_text())


def test_example_config_is_valid_and_has_three_tiers():
    cfg = load(ROOT / "tierwise.example.yaml")
    assert sorted(cfg.tiers) == [1, 2, 3]
    assert cfg.tiers[1].cost(1_000_000, 1_000_000) == pytest.approx(0.25 + 1.25)
    assert all(p.api_key_env for t in cfg.tiers.values() for p in t.providers)


def broken(path: str, value) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    ("tiers", [], "tiers: required"),
    ("tiers.0.tier", 7, "tiers[0].tier: must be 1, 2 or 3"),
    ("tiers.1.tier", 1, "tiers[1].tier: tier 1 is defined twice"),
    ("tiers.0.price_per_mtok.input", -1, "tiers[0].price_per_mtok.input: must not be negative"),
    ("tiers.0.price_per_mtok.output", "cheap", "tiers[0].price_per_mtok.output: expected a number"),
    ("tiers.0.providers", [], "tiers[0].providers: required"),
    ("tiers.2.providers.0.base_url", "api.example.com", "tiers[2].providers[0].base_url: must be an http:// or"),
    ("tiers.2.providers.0.base_url", "https://", "tiers[2].providers[0].base_url: must be an http:// or https:// URL "
                                                 "with a host"),
    ("tiers.2.providers.0.base_url", "http://api.example.com:port/v1", "tiers[2].providers[0].base_url: must be"),
    ("tiers.0.providers.0.api_key_env", "sk-proj-0123456789", "tiers[0].providers[0].api_key_env: must be the NAME"),
    ("tiers.2.providers.0.model", KeyError, "tiers[2].providers[0].model: required"),
    ("tiers.0.providers.0.api_key", "sk-123", "tiers[0].providers[0].api_key: secrets do not belong"),
    ("tiers.0.providers.0.timeout_s", 0, "tiers[0].providers[0].timeout_s: must be positive"),
    ("tiers.2.providers.0.max_tokens_field", "limit", "tiers[2].providers[0].max_tokens_field: must be max_tokens or"),
    ("tiers.2.providers.0.drop_options", ["colour"], "tiers[2].providers[0].drop_options[0]: must be one of temp"),
    ("tiers.0.providers.0.extra_body", {"model": "x"}, "tiers[0].providers[0].extra_body: must not set model"),
    ("tiers.0.providers.0.extra_body", {"at": float("nan")}, "tiers[0].providers[0].extra_body: must hold JSON"),
    ("classifier.timeout_ms", "fast", "classifier.timeout_ms: expected a number"),
    ("classifier.timeout_ms", 0, "classifier.timeout_ms: must be positive"),
    ("classifier.head_refresh_s", -1, "classifier.head_refresh_s: must be positive"),
    ("classifier.keep_warm_ms", -5, "classifier.keep_warm_ms: must be 0 (off) or more"),
    ("judge.tier", 5, "judge.tier: must be 1, 2 or 3"),
    ("strategy", "bogus", "strategy: unknown strategy 'bogus'; available: cascade, cheapest, embedding"),
    ("strategy", "cascade+heuristic", "strategy: unknown strategy 'cascade+heuristic'"),
    ("judge.fallback", "nope", "judge.fallback: unknown strategy 'nope'"),
    ("cascade.start", "x", "cascade.start: unknown strategy 'x'"),
    ("cascade.start", "cascade", "cascade.start: leads back to cascade: cascade -> cascade"),
    ("judge.fallback", "judge", "judge.fallback: leads back to judge: judge -> judge"),
    ("tiers.0.price_per_mtok.input", float("inf"), "tiers[0].price_per_mtok.input: must not be negative"),
    ("classifier.timeout_ms", float("inf"), "classifier.timeout_ms: must be positive"),
    ("cascade.gate", "vibes", "cascade.gate: unknown gate 'vibes'; available: heuristic, surface, verify"),
    ("cascade.verifier_tier", 4, "cascade.verifier_tier: must be 0 (the tier above the answer's), 1, 2 or 3"),
    ("cascade.verifier_timeout_ms", 0, "cascade.verifier_timeout_ms: must be positive"),
    ("cascade.verifier_bar", 1.5, "cascade.verifier_bar: must be between 0 and 1"),
    ("cascade.verifier_logprobs", 21, "cascade.verifier_logprobs: must be between 0 and 20"),
    ("cascade.verifier_logprobs", 0.5, "cascade.verifier_logprobs: expected an integer"),
    ("cascade.start_tradeoff", -0.1, "cascade.start_tradeoff: must be null or a finite number >= 0"),
    ("cascade.start_tradeoff", float("inf"), "cascade.start_tradeoff: must be null or a finite number >= 0"),
    ("telemetry.record_content", "yes", "telemetry.record_content: expected true or false"),
    ("shutdown", {"grace_s": 0}, "shutdown.grace_s: must be positive"),
    ("surprise", 1, "surprise: unknown key"),
])
def test_invalid_config_names_the_key(path, value, message):
    with pytest.raises(ConfigError) as err:
        parse(broken(path, value))
    assert str(err.value).startswith(message), str(err.value)
    if path.endswith("api_key_env"):
        assert value not in str(err.value), "a key pasted in by mistake is not shown"


def test_missing_tier_and_unreadable_file(tmp_path):
    doc = copy.deepcopy(EXAMPLE)
    doc["tiers"] = doc["tiers"][:2]
    with pytest.raises(ConfigError, match=r"tiers: tier\(s\) \[3\] missing"):
        parse(doc)
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


@pytest.mark.parametrize("section, key, value, message", [
    ("auth", "requests_per_minute", 10**400, "auth.requests_per_minute: must be 0 (no limit) to 1000000000"),
    ("idempotency", "max_mb", 1e303, "idempotency.max_mb: must be positive, at most 1e6"),
])
def test_numbers_past_what_the_router_can_count_are_refused_at_start(section, key, value, message):
    """Finite, so no 'must be positive' check caught them; they overflowed a float on the first call."""
    with pytest.raises(ConfigError) as err:
        parse({**copy.deepcopy(EXAMPLE), section: {key: value}})
    assert str(err.value).startswith(message), str(err.value)


def test_a_key_given_twice_is_refused_naming_it_and_a_merge_key_may_be_overridden(tmp_path):
    """The last of two `strategy:` would win silently, sending everything where the operator did not mean to."""
    example = (ROOT / "tierwise.example.yaml").read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(example + "\nstrategy: tier3\n")
    with pytest.raises(ConfigError, match="the key 'strategy' is given twice"):
        load(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text(example + "\nx-defaults: &limits {max_in_flight: 64}\nlimits:\n  <<: *limits\n  "
                                "max_in_flight: 32\n")
    with pytest.raises(ConfigError, match="x-defaults"):  # a key it does not know, but no duplicate
        load(merged)


def test_readme_configuration_reference_is_generated_from_the_schema():
    from router_service.config import RouterConfig
    from router_service.config_doc import reference

    readme = (ROOT / "docs" / "configuration.md").read_text()
    start = readme.index("<!-- config-reference:start")
    body = readme[readme.index("\n", start) + 1: readme.index("<!-- config-reference:end -->")]
    assert body == reference(RouterConfig), "docs/configuration.md is stale: paste `python -m router_service.config`"


def test_every_documented_default_is_what_parse_applies():
    from router_service.config import RouterConfig

    minimal = {"tiers": [{"tier": t, "price_per_mtok": {"input": 1, "output": 1},
                          "providers": [{"name": "p", "base_url": "http://127.0.0.1:1/v1", "model": "m"}]}
                         for t in (1, 2, 3)]}
    cfg = parse(minimal)
    assert cfg.strategy == RouterConfig.strategy and cfg.expected_output_tokens == RouterConfig.expected_output_tokens
    p = cfg.tiers[1].providers[0]
    assert (p.timeout_s, p.max_retries, p.breaker_failures, p.api_key_env) == (30.0, 2, 5, "")
    assert (p.max_tokens_field, p.drop_options, p.extra_body) == ("max_tokens", (), {})


@pytest.mark.parametrize("limits, message", [
    ({"max_in_flight": 0}, "limits.max_in_flight: must be at least 1, not 0"),
    ({"max_messages": -3}, "limits.max_messages: must be at least 1, not -3"),
    ({"max_total_bytes": "1MB"}, "limits.max_total_bytes: expected an integer"),
    ({"max_message_bytes": 2_000_000}, "limits.max_message_bytes: must not exceed limits.max_total_bytes (1048576)"),
    ({"max_requests": 5}, "limits.max_requests: unknown key"),
    ({"max_total_bytes": 2**40}, "limits.max_total_bytes: must be under 2 GiB"),
])
def test_invalid_limits_name_the_key(limits, message):
    with pytest.raises(ConfigError) as err:
        parse({**copy.deepcopy(EXAMPLE), "limits": limits})
    assert str(err.value).startswith(message), str(err.value)


def test_limits_default_to_sane_bounds_and_can_be_raised():
    cfg = parse(EXAMPLE).limits
    assert (cfg.max_in_flight, cfg.max_messages, cfg.max_message_bytes, cfg.max_total_bytes) == (
        1024, 256, 256 * 1024, 1024 * 1024)
    raised = parse({**EXAMPLE, "limits": {"max_total_bytes": 8 << 20, "max_message_bytes": 4 << 20}}).limits
    assert (raised.max_total_bytes, raised.max_message_bytes, raised.max_in_flight) == (8 << 20, 4 << 20, 1024)


def test_a_section_left_empty_takes_its_defaults_and_an_empty_setting_is_still_refused():
    text = yaml.safe_dump(EXAMPLE) + "shutdown:\n#  grace_s: 60\nidempotency:\n"
    cfg = parse(yaml.safe_load(text))
    defaults = parse(EXAMPLE)
    assert (cfg.shutdown, cfg.idempotency) == (defaults.shutdown, defaults.idempotency)
    with pytest.raises(ConfigError, match="strategy: expected a string"):
        parse({**EXAMPLE, "strategy": None})


def test_every_problem_of_a_file_is_reported_in_one_run(tmp_path):
    doc = broken("tiers.0.providers.0.base_url", "api.example.com")
    doc["tiers"][1]["price_per_mtok"]["output"] = "cheap"
    doc["cascade"]["gate"] = "vibes"
    doc["shadow"] = {"labels": "labels.jsonl", "tier": 2}
    doc["limits"] = {"max_in_flight": 0}
    path = tmp_path / "five.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load(path)
    lines = str(err.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted([
        "tiers[0].providers[0].base_url", "tiers[1].price_per_mtok.output", "cascade.gate", "shadow.tier",
        "limits.max_in_flight"]), lines
    assert "shadow.tier: must be 3 when shadow.labels is set" in str(err.value)

    router = subprocess.run([sys.executable, "-m", "router_service", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert router.returncode == 2 and "Traceback" not in router.stderr, router.stderr
    printed = [line for line in router.stderr.splitlines() if line.startswith("tierwise-router: invalid config: ")]
    assert len(printed) == 5 and [p.split(": ", 2)[2] for p in printed] == lines, router.stderr


def test_tier_set_problems_and_settings_name_the_key():
    doc = copy.deepcopy(EXAMPLE)
    doc["tiers"][2]["tier"] = 1  # tier 1 twice, tier 3 missing: both said
    message = str(pytest.raises(ConfigError, parse, doc).value)
    assert message.splitlines() == ["tiers[2].tier: tier 1 is defined twice",
                                    "tiers: tier(s) [3] missing; define tiers 1, 2 and 3"], message
    with pytest.raises(ConfigError, match=r"^auth.api_keys_file: expected a string"):
        with_settings(parse(EXAMPLE), {"auth.api_keys_file": 7})
    assert with_settings(parse(EXAMPLE), {"tls.cert": "c.pem", "tls.key": None}).tls.cert == "c.pem"


def test_a_config_is_frozen():
    cfg = parse(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tiers[1].providers[0].timeout_s = 1.0  # type: ignore[misc]


YAMLISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=4),
    max_leaves=20)


def _nodes(node, path=()):
    """Every (path, value) in a parsed YAML document."""
    yield path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _nodes(child, (*path, key))


EXAMPLE_PATHS = [path for path, _ in _nodes(EXAMPLE) if path]


def _parses_or_names_keys(doc) -> None:
    try:
        parse(doc)
    except ConfigError as err:
        lines = str(err).splitlines()
        assert lines and all(": " in line and not line.startswith(": ") for line in lines), lines


@settings(max_examples=200, deadline=None, database=None)
@given(YAMLISH)
def test_any_yaml_structure_is_a_config_or_a_config_error(doc):
    _parses_or_names_keys(doc)


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(EXAMPLE_PATHS), YAMLISH, st.booleans())
def test_any_value_anywhere_in_the_example_is_a_config_or_a_config_error(path, value, extra_key):
    doc = copy.deepcopy(EXAMPLE)
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    if extra_key and isinstance(node, dict):
        node[f"{last}_typo"] = value
    else:
        node[last] = value
    _parses_or_names_keys(doc)


def test_a_provider_named_twice_in_a_tier_is_refused():
    """Answers are billed, and breakers counted, by provider name: two providers of one name would share them."""
    doc = copy.deepcopy(EXAMPLE)
    first = doc["tiers"][0]["providers"][0]
    doc["tiers"][0]["providers"].append({**first, "model": "another-model"})
    with pytest.raises(ConfigError) as err:
        parse(doc)
    n = len(doc["tiers"][0]["providers"]) - 1
    assert str(err.value) == f"tiers[0].providers[{n}].name: provider {first['name']!r} is named twice in this tier"
