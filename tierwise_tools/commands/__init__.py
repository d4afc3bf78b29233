"""The `tierwise` subcommands: each module registers its parser(s) with `register(subparsers)`."""
from . import calibration, client, costs, evaluation, labelling, learn, promotion, simulate, train

COMMANDS = (client, train, evaluation, calibration, promotion, learn, costs, labelling, simulate)  # `--help`'s order
