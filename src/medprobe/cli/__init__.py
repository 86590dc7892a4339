"""The `medprobe` command line, the top layer. User mistakes print one line and exit 2; nothing prints a traceback for them.

Each command lives in its own module with `add_commands(subparsers)` and a `cmd_*` function; the
library below raises typed errors without CLI hints, and `main` adds them.
"""

import argparse
import logging
import sys

from medprobe import __version__
from medprobe.cli import baseline, bench, cache, compare, curve, embed, evaluate, listing, predict, report, run, serve
from medprobe.core.errors import MedprobeError, UnknownNameError

# The command that lists each kind of name, for "unknown ..." errors.
LISTING_COMMANDS = {"dataset": "medprobe datasets", "encoder": "medprobe encoders", "probe": "medprobe probes"}


def build_parser():
    parser = argparse.ArgumentParser(prog="medprobe", description="Training-free medical image classification with frozen embeddings.")
    parser.add_argument("--version", action="version", version=f"medprobe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (run, embed, listing, cache, bench, baseline, curve, report, predict, evaluate, compare, serve):
        module.add_commands(commands)
    return parser


# Control characters other than a line break, shown escaped: a message may quote a hand-edited file (a header cell holding
# a carriage return, an ANSI escape), and printed raw they would break its line or the terminal.
_ESCAPED = {code: ascii(chr(code))[1:-1] for code in [*range(32), 127] if code != ord("\n")}


def describe_error(error):
    """The one line a user sees: the library's message, plus where to look when a name is unknown."""
    message = str(error).translate(_ESCAPED)
    if isinstance(error, UnknownNameError) and error.kind in LISTING_COMMANDS:
        message += f" (run `{LISTING_COMMANDS[error.kind]}` to list them)"
    elif error.command:
        message += f"; make it with `{error.command}`"
    return message


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medprobe: %(message)s")
    try:
        args.func(args)
    except MedprobeError as e:
        print(f"medprobe: error: {describe_error(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `medprobe datasets | head`
        return 0
    except KeyboardInterrupt:
        print("medprobe: interrupted; finished cache shards are kept and the next run resumes from them", file=sys.stderr)
        return 130
    return 0
