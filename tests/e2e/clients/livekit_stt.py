"""LiveKit's ``deepgram.STT`` (``livekit-plugins-deepgram``) with its defaults
(``vad_events=true``, ``endpointing=25``, interim results), base URL changed, streaming a
real file in real time. Prints the speech events it produced as JSON.

    python livekit_stt.py --url http://host:port/v1/listen --audio speech.raw --rate 16000
"""

from __future__ import annotations

import asyncio
import json
import sys

import dropped  # this directory's: fails the script when the SDK drops a message
import livekit_run  # this directory's: the arguments and the streaming the scripts share
from livekit.plugins import deepgram


def main() -> None:
    args = livekit_run.arguments(tail=1.5).parse_args()
    dropped.watch()
    result = asyncio.run(
        livekit_run.transcribe(
            args,
            lambda session: deepgram.STT(api_key=args.key, base_url=args.url, http_session=session),
        )
    )
    json.dump(result, sys.stdout)
    dropped.check()


if __name__ == "__main__":
    main()
