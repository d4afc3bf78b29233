"""Tierwise router service: the gRPC front door that decides the tier and dispatches to providers."""
