"""A decision made on the whole request: earlier turns and the system prompt can raise the tier, and a tier whose
providers cannot hold the request is skipped upwards. Applied to every strategy's decision, so each decides from
the conversation, not only its last user message.

The two conversation rules are of the seed's surface kind, stated once: code earlier in the conversation (code for
certain, not the heuristic's looser cues) asks for at least tier 2 (the answer must read and keep to it); a long
context asks for tier 2 from LONG_CONTEXT_TOKENS and for tier 3 from VERY_LONG_CONTEXT_TOKENS (small models lose
track of long contexts first).
"""
from __future__ import annotations

import re
from dataclasses import replace
from itertools import islice
from typing import Mapping, Sequence

from tierwise.tiers import CHEAPEST, FRONTIER

from .providers import DEFAULT_SAMPLING, Needs, Outcome, Sampling, TierChain
from .messages import asked
from .providers.chain import needs_of
from .strategies import Decision
from .tokens import conversation_tokens

LONG_CONTEXT_TOKENS = 2_000
VERY_LONG_CONTEXT_TOKENS = 8_000

# Code for certain: a fence, a definition or an include on a line of its own, a SQL query. Stricter than the
# heuristic's cues ("function", "class", "=>", a line ending in ";"), which plain English system prompts are full
# of, and which would raise every turn of such a conversation to tier 2.
SURE_CODE = re.compile(
    r"```|^\s*#include\s*[<\"]|^\s*(?:async\s+)?def\s+\w+\s*\(.*\)\s*(?:->.*)?:\s*$|^\s*class\s+\w+\s*(?:\(.*\))?\s*:\s*$"
    r"|^\s*(?:function\s+\w+|(?:public|private|protected)\s+(?:static\s+)?[\w<>\[\]]+\s+\w+)\s*\(.*\)\s*\{?\s*$"
    r"|\bSELECT\s+\S.*?\s+FROM\s+\w+|\bselect\s+\S.*?\s+from\s+\w+\s+where\b", re.M)
# Lines that read as code: a call or assignment ending in a semicolon, a block opened after a call, an arrow or
# a keyword, or an import, return or block header of their own. Neither "- be kind;" in a list of rules nor the
# braces of a JSON template a system prompt asks replies to keep to is one.
CODE_LINE = re.compile(r"^[^(=\n]*[(=][^\n]*;\s*$|(?:\)|=>|\belse|\btry|\bdo)\s*\{\s*$"
                       r"|^\s*(?:import\s+[\w.]+|from\s+[\w.]+\s+import\b.*|return\b.*|(?:if|for|while)\b.*:)\s*$", re.M)


def looks_like_code(text: str) -> bool:
    return bool(SURE_CODE.search(text)) or sum(1 for _ in islice(CODE_LINE.finditer(text), 3)) == 3


class NoTierFits(ValueError):
    """No tier's providers can hold the request."""


def floor(messages: Sequence[Mapping[str, str]]) -> tuple[int, str]:
    """(the lowest tier the conversation allows, why); (1, "") when only the last user message matters."""
    query = asked(messages)
    earlier = [m for i, m in enumerate(messages) if i != query]
    tokens = conversation_tokens(messages)
    if tokens >= VERY_LONG_CONTEXT_TOKENS:
        return FRONTIER, f"a long conversation (about {tokens} tokens)"
    if tokens >= LONG_CONTEXT_TOKENS:
        return 2, f"a long conversation (about {tokens} tokens)"
    if any(looks_like_code(m.get("content", "")) for m in earlier):
        return 2, "code earlier in the conversation"
    return 1, ""


def decide_on_conversation(decision: Decision, messages: Sequence[Mapping[str, str]],
                           chains: Mapping[int, TierChain], max_tokens: int | None = None,
                           sampling: Sampling = DEFAULT_SAMPLING, ceiling: int = FRONTIER,
                           pinned: bool = False) -> Decision:
    """`decision` raised to the conversation's floor (unless its tier is `pinned`), then to the first tier whose
    providers can hold the request, never above `ceiling` (an API key's `max_tier`); the reason says what moved
    it. NoTierFits when none can."""
    tier, reasons = decision.tier, []
    lowest, why = (CHEAPEST, "") if pinned else floor(messages)
    if lowest > tier:
        tier, reasons = lowest, [f"raised to tier {lowest}: {why}"]
    if tier > ceiling:
        tier = ceiling
        reasons.append(_held(ceiling))
    needs = needs_of(messages, max_tokens, sampling)
    refused = chains[tier].refusals(needs)  # the tiers above are looked at only when this one cannot take it
    fitting = tier if not refused else next((t for t in range(tier + 1, ceiling + 1) if not chains[t].refusals(needs)),
                                            None)
    if fitting is None:
        raise NoTierFits(_none_fit(chains, needs, tier, ceiling, max_tokens))
    if fitting > tier:
        reasons.append(f"skipped to tier {fitting}: tier {tier}'s providers cannot "
                       f"{_lacking(refused, needs, tier, ceiling)[1]}")
        tier = fitting
    if not reasons:
        return decision
    return replace(decision, tier=tier, reason=f"{decision.reason}; {'; '.join(reasons)}")


def held(decision: Decision, ceiling: int) -> Decision:
    """`decision`, no higher than `ceiling` (an API key's `max_tier`): Route's decision, made on the query alone."""
    if decision.tier <= ceiling:
        return decision
    return replace(decision, tier=ceiling, reason=f"{decision.reason}; {_held(ceiling)}")


def _held(ceiling: int) -> str:
    return f"held at tier {ceiling}: the API key's max_tier"


def _none_fit(chains: Mapping[int, TierChain], needs: Needs, tier: int, ceiling: int, max_tokens: int | None) -> str:
    """Why no tier from `tier` to `ceiling` can take the request, naming the field to change: each tier's reason
    when they differ (one cannot read the images, the next cannot hold them), and max_tokens when it alone is what
    no tier has room for."""
    why = {t: _lacking(chains[t].refusals(needs), needs, t, ceiling) for t in range(tier, ceiling + 1)}
    field, _, none_can = why[tier]
    if len({cannot for _, cannot, _ in why.values()}) > 1:
        field = "messages" if any(f == "messages" for f, _, _ in why.values()) else field
        none_can = "no tier can take the request: " + "; ".join(f"tier {t}'s providers cannot {cannot}"
                                                                for t, (_, cannot, _) in why.items())
    roomy = replace(needs, tokens=needs.tokens - (max_tokens or 0))
    if max_tokens and all(Outcome.SKIPPED_CONTEXT_WINDOW in chains[t].refusals(needs) for t in why) and any(
            not chains[t].refusals(roomy) for t in why):
        field, none_can = "max_tokens", f"{max_tokens} leaves no room for the answer: {none_can}"
    return f"{field}: {none_can}"


def _lacking(refused: list[Outcome], needs: Needs, tier: int, ceiling: int) -> tuple[str, str, str]:
    """Why tier `tier`'s providers refused the request: (the request field to name, what they cannot do, the error
    when no tier above, up to `ceiling`, can either)."""
    tiers = (f"tier {tier} or above" if ceiling == FRONTIER else
             f"tier {tier}" + (f" to {ceiling}" if ceiling > tier else "") + " (the API key's max_tier)")
    if Outcome.SKIPPED_CONTEXT_WINDOW in refused:
        return ("messages", f"hold about {needs.tokens} tokens",
                f"the request needs about {needs.tokens} tokens (every message, the tools and max_tokens); no provider "
                f"of {tiers} holds that many")
    if Outcome.SKIPPED_NO_VISION in refused:
        return ("messages", "read images", f"the request carries images; no provider of {tiers} reads them (vision)")
    return "tools", "call tools", f"the request offers tools; no provider of {tiers} calls them (tools)"
