"""The `tierwise` subcommands: each module registers its parser(s) with `register(subparsers)`."""
from . import calibration, client, costs, evaluation, labelling, promotion, train

COMMANDS = (client, train, evaluation, calibration, promotion, costs, labelling)  # the order `--help` lists them
