"""Tierwise classifier service: a shared gRPC model server predicting the cheapest adequate tier."""
