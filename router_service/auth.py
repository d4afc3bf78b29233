"""API keys at the router's front door: a grpc.aio server interceptor on every RouterService method (health and
reflection stay open), and the same check in front of the OpenAI-compatible HTTP API (router_service/http).

The keys file (docs/configuration.md has an example) holds one key a line, in clear or as `sha256:<64 hex>` of it,
then optional settings. `id=` names the key in logs, spans (`tierwise.key_id`) and metrics (default: the first 8 hex digits of the key's
sha256); `rpm=` and `monthly_usd=` are its limits (default: `auth.requests_per_minute` and `auth.monthly_usd`;
0 = none); `max_tier=` the highest tier its calls are answered at (default: every tier); `quality_target=` the
quality vs frontier its calls are held to when they set none (default: the head's). Only the keys' sha256
digests are kept in memory, and a presented key's digest is compared with every one of them in constant time. The file is re-read when it changes (polled every `auth.reload_s`) or on
SIGHUP; a file that does not parse, or holds no key where it held some, is logged (line number, never its text)
and the previous keys stay.
Callers send `authorization: Bearer <key>` (gRPC metadata or HTTP header); no key or a wrong one gets
UNAUTHENTICATED (HTTP 401), a key over a limit RESOURCE_EXHAUSTED with `retry-after` (seconds) in the trailing
metadata (HTTP 429 with a Retry-After header). A key past its monthly spend may still make a call that pays no
provider: a Route whose strategy asks no model to decide, or a retried Complete answered from the call with its
idempotency key (admission's `spend`: NEVER and LATER).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

from tierwise.handlers import rewrapped
from tierwise.metrics import quality_target
from tierwise.serving import Rejected
from tierwise.tiers import FRONTIER, TIERS, tier_list
from tierwise.watching import every_or_sighup, file_signature

from .ledger import SpendLedger
from .limits import MAX_RPM, Limits

log = logging.getLogger("tierwise.router.auth")
# The key the current call was admitted with, and the gate that admitted it: the core charges the key what each
# answer cost, and gives a call it refused before any work back to the key's rate.
ADMITTED: ContextVar["Admitted | None"] = ContextVar("tierwise_admitted", default=None)
HASHED = re.compile(r"(?i:sha256):([0-9a-fA-F]{64})")
ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
SETTINGS = ("id", "rpm", "monthly_usd", "max_tier", "quality_target")
NOW, NEVER, LATER = "now", "never", "later"  # when a call's monthly spend is checked (KeyGate.admit)


class KeysFileError(ValueError):
    """The keys file does not parse; the message names the file and line, never the line's text."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes
    rpm: int
    monthly_usd: float
    max_tier: int = FRONTIER
    quality_target: float | None = None  # what its calls that set none are held to (None: the head's default)


def parse_keys(text: str, source: str, rpm: int = 0, monthly_usd: float = 0.0) -> list[ApiKey]:
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        tokens = raw.split()
        comment = next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))
        if not comment:
            continue
        at = f"{source}:{number}"
        secret, settings = tokens[0], _settings(tokens[1:comment], at)
        hashed = HASHED.fullmatch(secret)
        if not hashed and secret.lower().startswith("sha256:"):
            raise KeysFileError(f"{at}: a key given as sha256: must be 64 hex digits after it")
        digest = bytes.fromhex(hashed.group(1)) if hashed else hashlib.sha256(secret.encode()).digest()
        key = ApiKey(id=settings.get("id", digest.hex()[:8]), digest=digest,
                     rpm=_whole(settings.get("rpm"), rpm, f"{at}: rpm"),
                     monthly_usd=_amount(settings.get("monthly_usd"), monthly_usd, f"{at}: monthly_usd"),
                     max_tier=_tier(settings.get("max_tier"), f"{at}: max_tier"),
                     quality_target=_target(settings.get("quality_target"), f"{at}: quality_target"))
        if not ID.fullmatch(key.id):
            raise KeysFileError(f"{at}: id must be 1 to 64 letters, digits, '.', '_' or '-'")
        for other in keys:
            if other.digest == digest or other.id == key.id:
                raise KeysFileError(f"{at}: the same {'key' if other.digest == digest else 'id'} as an earlier line "
                                    f"(id {other.id})")
        keys.append(key)
    return keys


def _settings(tokens: list[str], at: str) -> dict[str, str]:
    found = {}
    for i, token in enumerate(tokens, 1):
        name, sep, value = token.partition("=")
        if not sep or name not in SETTINGS or name in found:
            # The token is not echoed: a key pasted in the wrong place must not reach the log.
            raise KeysFileError(f"{at}: word {i + 1} is not one of id=, rpm=, monthly_usd=, max_tier=, "
                                "quality_target= (each at most once)")
        found[name] = value
    return found


def _whole(value: str | None, default: int, at: str) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > MAX_RPM:  # isdigit takes "²"
        raise KeysFileError(f"{at}: must be a whole number of requests a minute up to {MAX_RPM}, 0 = no limit")
    return int(value)


def _tier(value: str | None, at: str) -> int:
    if value is None:
        return FRONTIER
    if value not in map(str, TIERS):
        raise KeysFileError(f"{at}: must be {tier_list()}")
    return int(value)


def _target(value: str | None, at: str) -> float | None:
    if value is None:
        return None
    try:
        return quality_target(float(value))
    except ValueError:
        raise KeysFileError(f"{at}: must be a quality vs frontier above 0 and at most 1, such as 0.9") from None


def _amount(value: str | None, default: float, at: str) -> float:
    if value is None:
        return default
    try:
        usd = float(value)
    except ValueError:
        usd = -1.0
    if not (math.isfinite(usd) and usd >= 0):
        raise KeysFileError(f"{at}: must be an amount of USD, 0 = no limit")
    return usd


class ApiKeys:
    """The accepted keys, re-read from the file when it changes."""

    def __init__(self, path: str | Path, rpm: int = 0, monthly_usd: float = 0.0):
        self.path = Path(path)
        self.defaults = (rpm, monthly_usd)
        self._seen = file_signature(self.path)
        self.keys = self._read()  # OSError or KeysFileError at start-up are the caller's to report

    def _read(self) -> list[ApiKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise KeysFileError(f"{self.path}: not UTF-8 text") from None
        except OSError as err:
            raise KeysFileError(f"the API keys file {self.path}: {err.strerror or err}") from None
        return parse_keys(text, str(self.path), *self.defaults)

    def poll(self) -> bool:
        """Re-read the file if it changed; True when new keys took over."""
        now = file_signature(self.path)
        if now == self._seen:
            return False
        self._seen = now
        try:
            keys = self._read()
            if not keys and self.keys:  # an editor or `cat >` rewriting it in place empties it first
                raise KeysFileError(f"{self.path} holds no key now (part-way through a rewrite?); to refuse every "
                                    "caller, leave one key that no caller holds")
        except (OSError, ValueError) as err:  # KeysFileError is a ValueError
            log.error("API keys not reloaded, the previous ones stay: %s", err)
            return False
        log.info("API keys reloaded: %d keys", len(keys), extra={"fields": {"key_ids": [k.id for k in keys]}})
        self.keys = keys
        return True

    def find(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self.keys:  # every digest is compared, in constant time, whichever matches
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


async def watch(keys: ApiKeys, every: float) -> None:
    """Poll the keys file every `every` s, and at once on SIGHUP."""
    async def check() -> None:
        keys.poll()
    await every_or_sighup(every, check)


def bearer(metadata) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata; "" when there is none."""
    for name, value in metadata or ():
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ") if isinstance(value, str) else ("", "", "")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def api_key(headers) -> str:
    """The key of an HTTP request's headers (lower-cased name, value pairs): `x-api-key`, as Anthropic's SDKs send
    it, or else the bearer token; "" when there is neither."""
    headers = list(headers)
    given = next((value for name, value in headers if name == "x-api-key"), "")
    return given.strip() or bearer(headers)


@dataclass
class Admitted:
    key: ApiKey
    gate: "KeyGate"
    limited: bool  # counted against the key's rate (a call that uses nothing, such as listing models, is not)
    # Its monthly spend is to be checked before it pays (check_current_spend), and its admission counted then.
    pending: bool = False


def current_key_id() -> str:
    """The id of the key the current call was admitted with ("" without keys)."""
    admitted = ADMITTED.get()
    return admitted.key.id if admitted is not None else ""


def current_max_tier() -> int:
    """The highest tier the current call's key may be answered at (the frontier without keys)."""
    admitted = ADMITTED.get()
    return admitted.key.max_tier if admitted is not None else FRONTIER


def current_quality_target() -> float | None:
    """The quality target the current call's key holds calls to when they set none (None: the head's default)."""
    admitted = ADMITTED.get()
    return admitted.key.quality_target if admitted is not None else None


def check_current_spend() -> None:
    """KeyRefused when the current call's key has spent its month and the front door left that to be checked
    before the call pays (a Complete whose retry may be answered for nothing, idempotency.py): the call is then
    given back to the key's rate, as the front door would not have counted it."""
    admitted = ADMITTED.get()
    if admitted is not None and admitted.pending:
        try:
            admitted.gate.check_spend(admitted.key)
        except KeyRefused:
            admitted.pending = False  # counted as refused
            refund_current_key()
            raise
        settle_current_admission()


def settle_current_admission() -> None:
    """Counts the current call as admitted if its spend, left for later, was never checked (it paid nothing: a
    replayed answer, or a refusal of its own)."""
    admitted = ADMITTED.get()
    if admitted is not None and admitted.pending:
        admitted.pending = False
        admitted.gate.metrics.auth.add(1, {"outcome": "ok", "key_id": admitted.key.id})


def refund_current_key() -> None:
    """Give the current call's request back to its key's rate limit (if it has a key): the router refused it as
    overloaded, which is no use of the key's quota (and the SDKs retry a 429 on their own)."""
    admitted = ADMITTED.get()
    if admitted is not None and admitted.limited:
        admitted.gate.limits.refund(admitted.key.id, admitted.key.rpm)


def charge_current_key(usd: float) -> None:
    """Charge the current call's key (if it has one) `usd` of provider cost: an answer's, or for a stream that
    ended without one, what it delivered."""
    admitted = ADMITTED.get()
    if admitted is not None:
        admitted.gate.charge(admitted.key, usd)


class KeyRefused(Rejected):
    """A call refused at the front door: UNAUTHENTICATED, or RESOURCE_EXHAUSTED with the limit's `kind`
    (rate_limited | spend_limited) and the seconds until a retry can succeed."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: int | None = None, kind: str = ""):
        super().__init__(code, message, (("retry-after", str(retry_after_s)),) if retry_after_s is not None else ())
        self.retry_after_s = retry_after_s
        self.kind = kind

    @property
    def error_code(self) -> str | None:
        """The code the HTTP API's error body gives a limit's refusal (OpenAI's own words for it)."""
        if self.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        return "spend_limit_exceeded" if self.kind == "spend_limited" else "rate_limit_exceeded"


class KeyGate:
    """Admits calls by API key and the key's limits, and counts what each key spends, whatever the transport."""

    def __init__(self, keys: ApiKeys, limits: Limits, metrics):
        self.keys = keys
        self.limits = limits
        self.metrics = metrics

    def admit(self, presented: str, peer: str, *, limited: bool = True, spend: str = NOW) -> ApiKey:
        """The key `presented` (a bearer token, "" for none) names, counted against its limits unless not `limited`
        (a call that uses nothing, such as listing models); else KeyRefused. The key's monthly spend is checked
        `spend`: NOW; NEVER for a call that pays no provider; LATER for one whose spend the core checks before it
        pays (check_current_spend), which is counted admitted then."""
        key = self.keys.find(presented) if presented else None
        if key is None:
            self.metrics.auth.add(1, {"outcome": "unauthenticated", "key_id": ""})
            log.info("call refused: %s API key", "unknown" if presented else "no", extra={"fields": {"peer": peer}})
            raise KeyRefused(grpc.StatusCode.UNAUTHENTICATED,
                             "missing or unknown API key: send `authorization: Bearer <key>` (or, to the Messages "
                             "API, `x-api-key: <key>`)")
        now = spend == NOW
        self._refuse(key, self.limits.admit(key.id, key.rpm, key.monthly_usd, paid=now) if limited else None)
        later = limited and spend == LATER
        if not later:
            self.metrics.auth.add(1, {"outcome": "ok", "key_id": key.id})
        ADMITTED.set(Admitted(key, self, limited, later))  # each call runs in its own task: this is the call's alone
        return key

    def check_spend(self, key: ApiKey) -> None:
        """KeyRefused when `key` has spent its month."""
        self._refuse(key, self.limits.over_spend(key.id, key.monthly_usd))

    def _refuse(self, key: ApiKey, refusal) -> None:
        if refusal is not None:
            self.metrics.auth.add(1, {"outcome": refusal.kind, "key_id": key.id})
            log.info("call refused: %s", refusal.message, extra={"fields": {"key_id": key.id}})
            raise KeyRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message, refusal.retry_after_s, refusal.kind)

    def charge(self, key: ApiKey, usd: float) -> None:
        if usd:
            self.limits.charge(key.id, usd)
            self.metrics.key_cost.add(usd, {"key_id": key.id})


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """The gate in front of `service`'s gRPC methods."""

    def __init__(self, service: str, gate: KeyGate):
        self.prefix = f"/{service}/"
        self.gate = gate
        self.keys = gate.keys
        # spend(method, request, metadata): when a call's monthly spend is checked (NOW, NEVER, LATER; KeyGate.admit)
        self.spend: Callable[[str, object, dict[str, str]], str] = lambda *_: NOW

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler  # health, reflection, unknown methods: open
        method = details.method.rsplit("/", 1)[-1]
        return rewrapped(handler, lambda request, context: _Admitted(self, method, request, context))

    async def _admit(self, context, method: str, request) -> ApiKey:
        metadata = context.invocation_metadata() or ()
        spend = self.spend(method, request, dict(metadata))
        try:
            return self.gate.admit(bearer(metadata), context.peer(), spend=spend)
        except KeyRefused as err:
            self.gate.metrics.calls.add(method, err.code.name)
            await context.abort(err.code, str(err), trailing_metadata=err.trailing)


class _Admitted:
    """Around one gRPC call: admitted by its key first (a refusal ends it there), its admission settled as it ends.
    The core charges the key what each answer cost (charge_current_key), as it learns it."""
    __slots__ = ("interceptor", "method", "request", "context")

    def __init__(self, interceptor: ApiKeyInterceptor, method: str, request, context):
        self.interceptor, self.method, self.request, self.context = interceptor, method, request, context

    async def __aenter__(self) -> None:
        await self.interceptor._admit(self.context, self.method, self.request)

    async def __aexit__(self, *exc) -> bool:
        settle_current_admission()
        return False


def front_door(settings, service: str, metrics, ledger: SpendLedger | None = None) -> ApiKeyInterceptor | None:
    """The interceptor for the config's `auth` settings, counting spend in `ledger`; None (every call accepted, with
    a warning) without a keys file. OSError or KeysFileError when the file cannot be used."""
    if not settings.api_keys_file:
        log.warning("no API keys file: every call is accepted; set --api-keys-file (auth.api_keys_file) to "
                    "require keys")
        return None
    keys = ApiKeys(settings.api_keys_file, settings.requests_per_minute, settings.monthly_usd)
    log.info("API keys loaded: %d keys", len(keys.keys), extra={"fields": {"key_ids": [k.id for k in keys.keys]}})
    return ApiKeyInterceptor(service, KeyGate(keys, Limits(ledger=ledger), metrics))
