"""LiveKit's ``assemblyai.STT`` (``livekit-plugins-assemblyai``) with its defaults,
``base_url`` changed, streaming a real file in real time. Prints the speech events it
produced as JSON.

    python livekit_assemblyai.py --url ws://host:port --audio speech.raw --rate 16000
"""

from __future__ import annotations

import asyncio
import json
import sys

import livekit_run  # this directory's: the arguments and the streaming the scripts share
from livekit.plugins import assemblyai


def main() -> None:
    args = livekit_run.arguments(tail=1.5).parse_args()
    result = asyncio.run(
        livekit_run.transcribe(
            args,
            lambda session: assemblyai.STT(
                api_key=args.key, base_url=args.url, http_session=session
            ),
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
