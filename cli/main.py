"""`payledger`: the parser, and the one place where errors become exit codes.

Each command group lives in a module of its own and adds its subcommands here:

    serve.py     serve (the HTTP service, optionally with the workers)
    workers.py   project, reconcile
    webhooks.py  endpoints, deliveries, dispatch
    history.py   history
    bills.py     bills reconcile (WeChat's daily bills)
    ops.py       query, certificates, rebuild, verify, reencrypt
    requests.py  refund, close (asked of WeChat Pay through the ledger)
    operators.py operators (the console's named operators)
    dev.py       demo, sandbox, dev-notify (and the --dev merchant)

Every command builds what it runs on through `api.bootstrap.bootstrap(settings)` and prints
through `cli.output` (tables, `--json`, progress bars). Exit codes: 0 done; 1 the command failed
(a `LedgerError`: its fixed reason is printed, or for the errors whose message is our own sentence
about the operator's input, that sentence); 2 the configuration or the command line is wrong.
Each command's `--help` ends with its own (`cli.exits`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version

from cli import bills, dev, history, operators, ops, requests, serve, webhooks, workers
from cli.common import load_settings
from ledger.errors import (
    ConfigurationError,
    EndpointNotFound,
    InvalidEndpoint,
    InvalidRequest,
    LedgerError,
    MessageNotFound,
    RequestConflict,
    RequestRefused,
)

__all__ = ["build_parser", "main"]


def package_version() -> str:
    try:
        return version("wechatpay-ledger")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payledger",
        description="Event-sourced WeChat Pay ledger",
        epilog="payledger COMMAND --help: its options and exit codes",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    serve.register(sub)
    history.register(sub)
    dev.register(sub)
    ops.register(sub)
    requests.register(sub)
    workers.register(sub)
    bills.register(sub)
    operators.register(sub)
    webhooks.register(sub, lambda a: load_settings(a, require_merchant=False))
    for command in walk(parser):
        command.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's lines as written
    return parser


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every (sub)command under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                yield from walk(command)


# Errors whose text is our own sentence about what the operator typed (never a secret, never
# an exception from below): printed as they are. Every other LedgerError prints its fixed reason.
_OWN_SENTENCE = (InvalidRequest, InvalidEndpoint, EndpointNotFound, MessageNotFound, RequestRefused, RequestConflict)
# The operator's input is wrong (like a bad configuration): exit 2.
_USAGE = (ConfigurationError, InvalidEndpoint)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; every error it raises becomes an exit code and one line on stderr."""
    try:
        return int(args.func(args))
    except LedgerError as exc:
        if isinstance(exc, ConfigurationError):
            message = f"configuration error: {exc.setting}: {exc.problem}"
        else:
            message = str(exc) if isinstance(exc, _OWN_SENTENCE) else exc.reason
        print(f"payledger: {message}", file=sys.stderr)
        return 2 if isinstance(exc, _USAGE) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
