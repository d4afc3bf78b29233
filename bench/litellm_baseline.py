"""LiteLLM's Router against the provider double, with the direct-SDK baseline measured in the same process.

Runs under the baseline interpreter (litellm installed), from the repository root:
  python -m bench.litellm_baseline --base-url URL --count N --warmup W --out result.json
The Router mirrors Tierwise's tier 1: t1-a first, t1-b as its fallback, no retries; otherwise defaults.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

from .router_timing import KEY, MODEL, interleaved, sdk_call, user


async def measure(base_url: str, count: int, warmup: int) -> dict:
    import openai
    from litellm import Router

    def deployment(name: str) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base_url,
                                                        "api_key": KEY, "max_retries": 0}}

    router = Router(model_list=[deployment(MODEL), deployment("t1-b")], fallbacks=[{MODEL: ["t1-b"]}], num_retries=0)
    calls = {"direct_sdk": sdk_call(base_url),
             "litellm_router": lambda text: router.acompletion(model=MODEL, messages=user(text))}
    result = await interleaved(calls, count, warmup)
    return {**result, "versions": {"litellm": version("litellm"), "openai": openai.__version__,
                                   "python": platform.python_version()}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.litellm_baseline", description=__doc__)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no cost-map download
    args.out.write_text(json.dumps(asyncio.run(measure(args.base_url, args.count, args.warmup)), indent=2))


if __name__ == "__main__":
    main()
