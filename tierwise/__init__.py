"""Tierwise: the gRPC contract (tierwise.v1, generated from protos/) and the command-line tools."""
