"""Offline tools: the `tierwise` CLI, train, calibrate, eval, label, promote, costs, export.

The top layer: imports the foundation (`tierwise`) and the services, never the other way round.
"""
