"""The config schema's parts: fields that carry their documentation (the configuration reference is generated
from them), and checks that report every problem of a file at once, each under its key path (pydantic does the
walking; docs/decisions/0020)."""
from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import MISSING, field, fields
from typing import Annotated, Any, Callable, Sequence

import yaml
from pydantic import AfterValidator, ConfigDict, Strict, ValidationError
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
Positive = Annotated[float, Strict(), must(lambda v: 0 < v < math.inf, "must be positive")]  # refuses nan and inf
Megabytes = Annotated[float, Strict(), must(lambda v: 0 < v <= 1e6, "must be positive, at most 1e6 (a terabyte)")]
AtLeastZero = Annotated[float, Strict(), must(lambda v: v >= 0, "must be 0 or more")]
Dollars = Annotated[float, Strict(), must(lambda v: 0 <= v < math.inf, "must not be negative")]  # nor inf
AtLeastOne = Annotated[int, Strict(), must(lambda v: v >= 1, "must be at least 1")]
Tier = Annotated[int, Strict(), must(lambda v: v in TIERS, f"must be {tier_list()}")]


def reference(root: type) -> str:
    """The configuration reference as a Markdown table, generated from the sections under `root`."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            key = prefix + f.name
            nested = f.metadata.get("nested")
            if nested is None or f.default is None:  # an optional section has a row of its own
                rows.append(f"| `{key}` | {_default(f)} | {f.metadata['doc']} |")
            if nested is not None:
                walk(nested, key + ("[]." if f.metadata["many"] else "."))

    walk(root, "")
    return "\n".join(rows) + "\n"


def _default(f) -> str:
    if f.default is not MISSING:
        return f"`{json.dumps(f.default)}`"
    return "required" if f.default_factory is MISSING else f"`{json.dumps(f.default_factory())}`"


# What a pydantic error type means, in the words of the checks' own messages.
_EXPECTED = {"missing": "required", "string_type": "expected a string", "int_type": "expected an integer",
             "float_type": "expected a number", "bool_type": "expected true or false",
             "dataclass_type": "expected a mapping", "list_type": "expected a list", "tuple_type": "expected a list"}


def error_lines(err: ValidationError, root: type, prefix: tuple = ()) -> list[str]:
    """One line per problem in a config under `root`, each starting with its key path."""
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "config":
            lines += [f"{_path(loc + tuple(sub))}: {why}" for sub, why in e["ctx"]["problems"]]
        elif e["type"] in ("unexpected_keyword_argument", "invalid_key"):
            lines.append(f"{_path(loc[:-1] + (str(loc[-1]),))}: {_unknown(root, loc)}")  # the last is a key, never an index
        elif e["type"] == "missing":
            lines.append(f"{_path(loc)}: required")
        elif e["type"] in _EXPECTED:
            value = e["input"]
            got = type(value).__name__ if isinstance(value, (dict, list, type(None))) else reprlib.repr(value)
            lines.append(f"{_path(loc)}: {_EXPECTED[e['type']]}, got {got}")
        else:
            lines.append(f"{_path(loc)}: {e['msg']}")
    return lines


def _path(loc: tuple) -> str:
    path = "".join(f".{part}" if isinstance(part, str) and re.fullmatch(r"[\w-]+", part)
                   else f"[{part!r}]" for part in loc).lstrip(".")  # an odd key is quoted, never spread over lines
    return path or "(top level)"


def _unknown(root: type, loc: tuple) -> str:
    if loc[-1] == "api_key":
        return "secrets do not belong in the file; set api_key_env to the name of an environment variable holding the key"
    section: Any = root
    for part in loc[:-1]:
        if isinstance(part, str):
            section = {f.name: f for f in fields(section)}[part].metadata["nested"]
    return f"unknown key; expected one of {sorted(f.name for f in fields(section))}"


class UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice: the last would silently win (a second
    `strategy:` further down a file), and with it a setting the operator thinks is in force."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys after it may override its own
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)
