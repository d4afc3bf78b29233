"""Files kept one per router replica (`shadow.labels`, `shadow.log`, `spend.ledger`): in a configured path, `{host}`
stands for the host name, so replicas sharing a volume each write their own file, and the same path with `{host}`
read as `*` names them all."""
from __future__ import annotations

import socket
from pathlib import Path

HOST = "{host}"


def own_file(template: str, host: str | None = None) -> Path | None:
    """This replica's file (`host`, else this host's name, in place of `{host}`); None for an unset path ("")."""
    return Path(template.replace(HOST, host or socket.gethostname())) if template else None


def every_replica(template: str) -> str:
    """A glob of every replica's file."""
    return template.replace(HOST, "*")
