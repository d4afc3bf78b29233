"""Reload the heads directory while serving, so a promoted head goes live without a restart.

The directory is polled (and re-read at once on SIGHUP). A change is loaded in full beside the serving
heads and swapped in only if every head loads, fits the encoder and the default head is still there; a
broken or half-written set is logged once and the serving heads stay. Head files are compared by
tierwise.watching.file_signature, so a Kubernetes ConfigMap update (a swap of its `..data` link) shows.
Why reload instead of restart, and how a head gets promoted: docs/decisions/0015.
"""
from __future__ import annotations

import logging
from pathlib import Path

from tierwise.watching import file_signature

from .heads import HeadRegistry

log = logging.getLogger("tierwise.classifier")


def signature(directory: Path) -> tuple:
    """What identifies the directory's heads on disk: each head file's path, inode, size and mtime."""
    return file_signature(*sorted(Path(directory).glob("*/head.json")))


class HeadReloader:
    """Loads the heads again when `signature` changes, and vets the new set before it may serve."""

    def __init__(self, directory: Path, default: str | None, dimension: int, loaded: tuple):
        self.directory = Path(directory)
        self.default = default
        self.dimension = dimension
        self._seen = loaded  # the signature last acted on, loaded or refused

    def poll(self) -> HeadRegistry | None:
        """A new registry when the files changed and load cleanly; None when nothing changed or they did not."""
        now = signature(self.directory)
        if now == self._seen:
            return None
        self._seen = now
        try:
            registry = HeadRegistry.from_dir(self.directory, self.default)
            for head in registry:
                if head.dimension != self.dimension:
                    raise ValueError(f"head {head.name} expects {head.dimension}-d embeddings, encoder gives {self.dimension}")
        except Exception as err:  # noqa: BLE001 - any failure keeps the serving heads; the reason is logged
            log.error("heads not reloaded, still serving the previous ones: %s", err,
                      extra={"fields": {"heads_dir": str(self.directory)}})
            return None
        return registry
