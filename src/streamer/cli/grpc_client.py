"""``streamer client --grpc HOST:PORT``: the client's gRPC options.

The stream itself is ``streamer.client`` over a ``grpc://`` URL, with the options and
output of the WebSocket client.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlparse

ROUTES = ("simple", "segmented")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gRPC options of ``streamer client``."""
    parser.add_argument(
        "--grpc", metavar="HOST:PORT", help="stream over gRPC to this server instead of --addr"
    )
    parser.add_argument(
        "--route",
        choices=ROUTES,
        help="the route with --grpc (default: the one --addr names, else simple)",
    )


def route_of(args: argparse.Namespace) -> str:
    """The route a gRPC stream takes: ``--route``, or the last part of ``--addr``'s path."""
    if args.route is not None:
        return str(args.route)
    name = urlparse(str(args.addr)).path.rstrip("/").rsplit("/", 1)[-1]
    return name if name in ROUTES else "simple"


def address(args: argparse.Namespace) -> str:
    """Where ``streamer client`` streams to: ``--addr``, or the ``grpc://`` URL of ``--grpc``."""
    if args.grpc is None:
        return str(args.addr)
    return f"grpc://{args.grpc}/{route_of(args)}"
