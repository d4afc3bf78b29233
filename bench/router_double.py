"""The provider test double (tests/provider_double.py) in a process of its own, for the router bench.

Its HTTP threads then share no GIL with the bench client. Prints "provider-double ready on <base_url>",
serves until SIGTERM or SIGINT, and exits by itself after MAX_LIFETIME_S in any case.
"""
from __future__ import annotations

from tests import provider_double
from tierwise.run import StopOnSignal

MAX_LIFETIME_S = 900.0


def main() -> None:
    stop = StopOnSignal()
    with provider_double.ProviderDouble() as double:
        print(f"provider-double ready on {double.base_url}", flush=True)
        stop.wait(MAX_LIFETIME_S)
    print("provider-double stopped", flush=True)


if __name__ == "__main__":
    main()
