"""The router config's sections about its own server: the listener's TLS, the limits on what a request may hold
and on the calls served at once, and how long calls under way may take to finish at shutdown."""
from __future__ import annotations

from typing import Annotated

from pydantic import Strict

from tierwise.serving import GRPC_MAX_MESSAGE

from .config_doc import AtLeastOne, Positive, Text, doc, must, refuse, schema


@schema
class TLSConfig:
    cert: Text = doc("PEM certificate the router serves TLS with (\"\" = plaintext; --tls-cert); re-read when it "
                     "changes", "")
    key: Text = doc("PEM private key of `cert` (--tls-key)", "")
    client_ca: Text = doc("PEM CA bundle: clients must present a certificate it signed (mTLS; --tls-client-ca)", "")


@schema
class LimitsConfig:
    max_in_flight: AtLeastOne = doc("Route, Complete and CompleteStream calls served at once; past it a call gets "
                                    "RESOURCE_EXHAUSTED at once", 1024)
    max_messages: AtLeastOne = doc("messages in one Complete or CompleteStream request", 256)
    max_message_bytes: AtLeastOne = doc("UTF-8 bytes of one message's content, and of Route's query", 256 * 1024)
    max_total_bytes: AtLeastOne = doc("UTF-8 bytes of all of a request's messages together, their image URLs "
                                      "included (a data: URL holds the whole image)", 1024 * 1024)
    max_images: Annotated[int, Strict(), must(lambda v: v >= 0, "must be 0 (none) or more")] = doc(
        "images in one request, on its user messages", 16)

    def __post_init__(self) -> None:
        if self.max_message_bytes > self.max_total_bytes:
            refuse([(("max_message_bytes",), f"must not exceed limits.max_total_bytes ({self.max_total_bytes})")])
        if self.receive_bytes > GRPC_MAX_MESSAGE:
            refuse([(("max_total_bytes",), "must be under 2 GiB - 1 MiB, the most gRPC receives in one message")])

    @property
    def receive_bytes(self) -> int:  # gRPC's own 4 MiB cap stays unless the conversation limit (and framing) needs more
        return max(4 << 20, self.max_total_bytes + (1 << 20))


@schema
class ShutdownConfig:
    grace_s: Positive = doc(
        "on SIGTERM (or SIGINT) health turns NOT_SERVING and /health 503, and the calls under way over gRPC and HTTP "
        "get this long, together, to finish before they are cut (an HTTP call cut then answers 503 shutting_down); "
        "shadows they started get what is left of it. The process exits up to about 4 s later (5 s while an OTLP "
        "collector does not answer, whose last spans are then dropped), the cut calls' "
        "answers written out and their charges saved: keep this at least 5 s below the time its orchestrator waits "
        "before killing it (Kubernetes' terminationGracePeriodSeconds, less any preStop sleep; compose's "
        "stop_grace_period)", 25.0)
