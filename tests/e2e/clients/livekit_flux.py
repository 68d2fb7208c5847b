"""LiveKit's ``deepgram.STTv2`` (``livekit-plugins-deepgram``, Deepgram Flux), base URL
changed, with an early end of turn (``eager_eot_threshold``) and Flux's other thresholds,
streaming a real file in real time, then silence. Prints the speech events it produced as
JSON.

    python livekit_flux.py --url ws://host:port/v2/listen --audio speech.raw --rate 16000
"""

from __future__ import annotations

import asyncio
import json
import sys

import livekit_run  # this directory's: the arguments and the streaming the scripts share
from livekit.plugins import deepgram


def main() -> None:
    parser = livekit_run.arguments(tail=3.0)
    parser.add_argument("--eager", type=float, default=0.3)
    parser.add_argument("--eot", type=float, default=0.9)
    parser.add_argument("--timeout-ms", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(
        livekit_run.transcribe(
            args,
            lambda session: deepgram.STTv2(
                api_key=args.key,
                base_url=args.url,
                http_session=session,
                sample_rate=args.rate,
                eager_eot_threshold=args.eager,
                eot_threshold=args.eot,
                eot_timeout_ms=args.timeout_ms,
            ),
            timed=False,
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
