"""The config schema's parts: fields that carry their documentation (the configuration reference is generated
from them), and checks that report every problem of a file at once, each under its key path (pydantic does the
walking; docs/decisions/0020)."""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Annotated, Any, Callable, Sequence

from pydantic import AfterValidator, ConfigDict, Strict
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from tierwise.tiers import TIERS, tier_list

# A problem found by a check: the key path below the checked value (() = the value itself), and what is wrong.
Problem = tuple[tuple[str | int, ...], str]


def doc(text: str, default: Any = MISSING, *, nested: type | None = None, many: bool = False,
        factory: Any = MISSING) -> Any:
    """A config field with its documentation (the configuration reference is generated from these)."""
    meta = {"doc": text, "nested": nested, "many": many}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def schema(cls: type) -> type:
    """A config section: a frozen dataclass whose fields pydantic checks, refusing keys it does not declare."""
    return dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)


def refuse(problems: Sequence[Problem]) -> None:
    """Fail validation with every problem found (a check across fields may find several)."""
    if problems:
        raise PydanticCustomError("config", "{why}", {"why": "; ".join(why for _, why in problems),
                                                      "problems": list(problems)})


def must(ok: Callable[[Any], bool], rule: str) -> AfterValidator:
    """A check on one value: `rule` (e.g. "must be positive") with the value found, when `ok` refuses it."""
    def check(value: Any) -> Any:
        if not ok(value):
            refuse([((), f"{rule}, not {value!r}")])
        return value
    return AfterValidator(check)


Text = Annotated[str, Strict()]
Name = Annotated[str, Strict(), must(lambda v: v.strip(), "required, a non-empty string")]
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
Positive = Annotated[float, Strict(), must(lambda v: v > 0, "must be positive")]  # `>` also refuses nan
AtLeastZero = Annotated[float, Strict(), must(lambda v: v >= 0, "must be 0 or more")]
Dollars = Annotated[float, Strict(), must(lambda v: v >= 0, "must not be negative")]
AtLeastOne = Annotated[int, Strict(), must(lambda v: v >= 1, "must be at least 1")]
Tier = Annotated[int, Strict(), must(lambda v: v in TIERS, f"must be {tier_list()}")]
