"""The ``forgetting-sam`` command (also ``python -m forgetting_sam``).

Each subcommand group is a module in this package exposing ``register(subparsers)``, which adds
its subcommands and sets ``func`` on each; :data:`SUBCOMMAND_MODULES` lists them in ``--help``
order. A user error (a :class:`~forgetting_sam.engine.UserInputError`: bad config key or value,
missing data set, existing run, bad checkpoint, unwritable output folder) prints one line and
exits with status 2; set ``FORGETTING_SAM_DEBUG=1`` for the traceback. Any other exception is a
bug and keeps its traceback. A diverged run exits with 3; SIGINT with 130, SIGTERM with 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..engine.errors import UserInputError

__all__ = ["SUBCOMMAND_MODULES", "UserError", "build_parser", "main"]

# Other groups (landscape, correlate, ...) add their module here.
SUBCOMMAND_MODULES = [
    "forgetting_sam.cli.train",
    "forgetting_sam.cli.correlate",
    "forgetting_sam.cli.landscape",
]


class UserError(UserInputError):
    """Raised by a subcommand for input the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgetting-sam",
        description="SAM, ASAM, GSAM and OBF: train, compare and measure (see the subcommands).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error, 3 diverged, 130 SIGINT, 143 SIGTERM)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        opts = [u for u in unknown if u.startswith("--")]
        if args.command == "train" and opts:
            from ..engine.config import _unknown_key_error

            key = opts[0][2:].split("=")[0].replace("-", "_")
            print(f"forgetting-sam train: error: {_unknown_key_error(key)}", file=sys.stderr)
            return 2
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..engine import TrainingDiverged, TrainingInterrupted

    try:
        rc = args.func(args)
    except TrainingInterrupted as e:
        print(f"forgetting-sam {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention, which schedulers such as Slurm read
    except TrainingDiverged as e:
        print(f"forgetting-sam {args.command}: error: {e}", file=sys.stderr)
        return 3
    except UserInputError as e:
        if os.environ.get("FORGETTING_SAM_DEBUG"):
            raise
        print(f"forgetting-sam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"forgetting-sam {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    return int(rc or 0)
