"""The `tierwise` subcommands: each module registers its parser(s) with `register(subparsers)`."""
from . import calibration, client, costs, evaluation, labelling, promotion, simulate, train

COMMANDS = (client, train, evaluation, calibration, promotion, costs, labelling, simulate)  # the order `--help` lists them
