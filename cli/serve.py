"""`payledger serve`: the HTTP service, optionally with the projectors and the dispatcher in-process."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from api.bootstrap import Services, bootstrap
from cli.common import SubParsers, configure_logging, load_all_settings, load_shards
from cli.exits import FAILED, exit_codes
from ledger.store.backends import redact_url

__all__ = ["register"]


def cmd_serve(args: argparse.Namespace) -> int:
    # The HTTP stack is imported here, not at the top: every other command starts without it.
    import uvicorn

    from api.serving import SERVER_OPTIONS
    from api.shards import create_service

    shards = load_shards(args)
    settings = shards[0]
    configure_logging(settings.log_level, settings.log_format)
    if args.workers > 1 and args.with_workers:
        print("payledger: --with-workers runs in one process; run payledger project beside --workers", file=sys.stderr)
        return 2
    every_setting = load_all_settings(args)
    # Several processes: the stores are prepared once here, then each forked worker builds its own app.
    app = create_service(every_setting, background=args.workers == 1)
    for shard in shards:
        print(
            f"payledger: serving on http://{args.host}:{args.port} "
            f"(store {redact_url(shard.database_url.value)}; merchants {', '.join(m.mchid for m in shard.merchants)}"
            f"{f'; {args.workers} processes' if args.workers > 1 else ''})",
            file=sys.stderr,
        )
    if args.dev:
        print(
            f"payledger: development merchant; notify URL http://{args.host}:{args.port}/wechatpay/notify\n"
            "payledger: try   payledger dev-notify ORDER-0001 --amount 100 "
            f"--url http://{args.host}:{args.port}\n"
            "payledger: then  payledger history ORDER-0001 --dev",
            file=sys.stderr,
        )
    if args.workers > 1:
        from api.serving import prepare, run_workers

        prepare(app)
        return run_workers(lambda: create_service(every_setting), args.host, args.port, args.workers)
    stop = threading.Event()
    workers: list[threading.Thread] = []
    every: list[Services] = []
    if args.with_workers:
        for shard in shards:
            services = bootstrap(shard)
            every.append(services)
            services.sync_endpoints()
            workers += [*services.projector_threads(stop), services.dispatcher_thread(stop)]
    for worker in workers:
        worker.start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: ours only records it, so a clean stop exits 0 rather than "killed by signal".
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        uvicorn.run(app, host=args.host, port=args.port, **SERVER_OPTIONS)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        for services in every:
            services.close()
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub: SubParsers) -> None:
    serve = sub.add_parser(
        "serve", help="run the HTTP service", epilog=exit_codes((0, "stopped by SIGTERM or ctrl-C"), FAILED)
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--workers", type=_count, default=1, help="HTTP processes on the one port (default 1; docs/operations.md)"
    )
    serve.add_argument("--dev", action="store_true", help="use a generated local test merchant (./payledger-dev)")
    serve.add_argument(
        "--with-workers",
        action="store_true",
        help="also run the projectors and the webhook dispatcher here (single machine; the same locks apply)",
    )
    serve.set_defaults(func=cmd_serve)
