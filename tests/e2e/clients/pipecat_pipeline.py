"""A minimal Pipecat pipeline against a Deepgram-compatible server: Silero VAD, then
Pipecat's own ``DeepgramSTTService`` (base URL changed, nothing else), fed a real speech
file in real time. Its VAD sends ``Finalize`` at each pause. Prints what arrived as JSON.

    python pipecat_pipeline.py --url ws://host:port --audio speech.raw --rate 16000
"""

from __future__ import annotations

import asyncio
import json
import sys

import dropped  # this directory's: fails the script when the SDK drops a message
import pipecat_run  # this directory's: the pipeline and arguments the scripts share
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.deepgram.stt import DeepgramSTTService


def main() -> None:
    args = pipecat_run.arguments().parse_args()
    dropped.watch()

    def stt() -> FrameProcessor:
        return DeepgramSTTService(api_key=args.key, base_url=args.url, sample_rate=args.rate)

    result = asyncio.run(pipecat_run.run(args, stt, finalized=False))
    json.dump(result, sys.stdout)
    dropped.check()


if __name__ == "__main__":
    main()
