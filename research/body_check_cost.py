"""The HTTP API's body check (router_service.json_values) against json.loads alone, on a one-message body and on a
12 KB body with ten tools: what the check adds to each HTTP call. Best of 5 runs of 2,000 parses.

    .venv/bin/python -m research.body_check_cost
"""
from __future__ import annotations

import json, timeit
from router_service import json_values
small = json.dumps({"model": "tierwise", "messages": [{"role": "user", "content": "What time does the store close?"}]}).encode()
tools = json.dumps({"model": "tierwise", "messages": [{"role": "system", "content": "You are helpful." * 20},
                    {"role": "user", "content": "x" * 2000}],
                    "tools": [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 100, "parameters": {
                        "type": "object", "properties": {f"p{j}": {"type": "string", "description": "e" * 50}
                                                         for j in range(8)}}}} for i in range(10)]}).encode()
for name, body in (("one message", small), ("ten tools", tools)):
    runs = [min(timeit.repeat(f, number=2000, repeat=5)) / 2000 * 1e6 for f in (lambda: json.loads(body), lambda: json_values.loads(body))]
    print(f"{name} ({len(body)} bytes): json.loads {runs[0]:.1f} us, with the check {runs[1]:.1f} us")
