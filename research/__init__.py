"""Probes that reproduce the measurements of docs/decisions/: research code, not product code.

Each `dNNNN_*` module reproduces the numbers of decision record NNNN and runs from the repository root as
`.venv/bin/python -m research.<module>`; research/README.md lists them. The product (tierwise, the services,
tierwise_tools) never imports from here; the probes import only the product's public names.
"""
