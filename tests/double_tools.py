"""How the provider TEST DOUBLE uses the tools a request offers, as a model would: asked with tools (and a
tool_choice other than "none") by a conversation whose last message is not a tool's result, it calls a tool
instead of answering. It calls the function tool_choice names, else every tool when tool_choice is "required" (one
when parallel_tool_calls is false), else the first; the arguments hold the last message's word count. Given the
results, it answers in text as usual."""
from __future__ import annotations

import json
from typing import Any


def calls_for(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls the double makes for this request body, in OpenAI's shape; [] when it answers in text."""
    tools, choice, messages = body.get("tools") or [], body.get("tool_choice", "auto"), body["messages"]
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return []
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        names = [choice["function"]["name"]]
    elif choice != "required" or body.get("parallel_tool_calls") is False:
        names = names[:1]
    words = len(str(messages[-1].get("content") or "").split()) if messages else 0
    return [{"id": f"call_{i}_{name}", "type": "function",
             "function": {"name": name, "arguments": json.dumps({"words": words})}} for i, name in enumerate(names)]


def call_chunks(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream deltas of `calls` as a provider sends them: the id and name first, then the arguments in two
    pieces."""
    deltas = []
    for i, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        deltas.append({"index": i, "id": call["id"], "type": "function",
                       "function": {"name": call["function"]["name"], "arguments": ""}})
        deltas += [{"index": i, "function": {"arguments": piece}} for piece in (arguments[:half], arguments[half:])]
    return [{"tool_calls": [delta]} for delta in deltas]
