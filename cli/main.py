"""`payledger`: the parser, and the one place where errors become exit codes.

Each command group lives in a module of its own and adds its subcommands here:

    serve.py     serve (the HTTP service, optionally with the workers)
    workers.py   project, reconcile
    webhooks.py  endpoints, deliveries, dispatch
    history.py   history
    ops.py       query, certificates, rebuild, verify, reencrypt
    dev.py       demo, sandbox, dev-notify (and the --dev merchant)

Every command builds what it runs on through `api.bootstrap.bootstrap(settings)`.
Exit codes: 0 done, 1 the command failed (a `LedgerError`: its fixed reason is printed),
2 the configuration or the command line is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import dev, history, ops, serve, webhooks, workers
from cli.common import load_settings
from ledger.errors import ConfigurationError, LedgerError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payledger", description="Event-sourced WeChat Pay ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    history.register(sub)
    dev.register(sub)
    ops.register(sub)
    workers.register(sub)
    webhooks.register(sub, lambda a: load_settings(a, require_merchant=False))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; every error it raises becomes an exit code and one line on stderr."""
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"payledger: configuration error: {exc.setting}: {exc.problem}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"payledger: {exc.reason}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
