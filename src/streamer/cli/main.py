"""The ``streamer`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port on the same host (default 50051)")
    serve.add_argument(
        "--no-grpc", dest="grpc", action="store_false", default=None, help="serve no gRPC"
    )
    serve.add_argument(
        "--model",
        help="test (default), whisper (Whisper tiny.en; the whisper extra), or "
        "package.module:factory for a model of one's own",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="front-end processes on the same ports (default: one per usable core; 1: a "
        "single process)",
    )
    serve.add_argument("--config", type=Path, help="TOML settings file")

    from streamer.cli import client, grpc_client

    client_parser = sub.add_parser("client", help="stream an audio file to a server")
    client.add_arguments(client_parser)
    grpc_client.add_arguments(client_parser)

    from streamer.cli import bench

    bench.add_arguments(sub.add_parser("bench", help="load a server with many streams"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from streamer.cli.serve import serve

        serve(
            args.host,
            args.port,
            args.config,
            grpc_port=args.grpc_port,
            grpc=args.grpc,
            model=args.model,
            workers=args.workers,
        )
        return 0
    if args.command == "client":
        from streamer.cli.client import run
        from streamer.cli.grpc_client import address

        return run(args, address(args))
    if args.command == "bench":
        from streamer.cli.bench import run as run_bench

        return run_bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
