"""A minimal Pipecat pipeline against an AssemblyAI-compatible server: Silero VAD, then
Pipecat's own ``AssemblyAISTTService`` with its defaults (``api_endpoint_base_url``
changed, nothing else), fed a real speech file in real time. Its VAD sends
``ForceEndpoint`` at each pause. Prints what arrived as JSON.

    python pipecat_assemblyai.py --url ws://host:port/v3/ws --audio speech.raw --rate 16000
"""

from __future__ import annotations

import asyncio
import json
import sys

import pipecat_run  # this directory's: the pipeline and arguments the scripts share
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.assemblyai.stt import AssemblyAISTTService


def main() -> None:
    args = pipecat_run.arguments().parse_args()

    def stt() -> FrameProcessor:
        return AssemblyAISTTService(
            api_key=args.key, api_endpoint_base_url=args.url, sample_rate=args.rate
        )

    result = asyncio.run(pipecat_run.run(args, stt, finalized=True))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
