"""A minimal Pipecat pipeline against a Deepgram Flux-compatible server: Pipecat's own
``DeepgramFluxSTTService`` (its ``url`` changed, nothing else) fed a real speech file in
real time, then silence. Flux decides the turns, so there is no local VAD. Prints what
arrived as JSON.

    python pipecat_flux.py --url ws://host:port/v2/listen --audio speech.raw --rate 16000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService


class Recorder(FrameProcessor):
    """Keeps the frames the test looks at, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, TranscriptionFrame):
            finalized = bool(getattr(frame, "finalized", False))
            self.seen.append({"kind": "final", "text": frame.text, "finalized": finalized})
        elif isinstance(frame, InterimTranscriptionFrame):
            self.seen.append({"kind": "interim", "text": frame.text})
        elif isinstance(frame, ProposedUserStartedSpeakingFrame | UserStartedSpeakingFrame):
            self.seen.append({"kind": "started", "frame": type(frame).__name__})
        elif isinstance(frame, ProposedUserStoppedSpeakingFrame | UserStoppedSpeakingFrame):
            self.seen.append({"kind": "stopped", "frame": type(frame).__name__})
        elif isinstance(frame, ErrorFrame):
            self.seen.append({"kind": "error", "text": str(frame.error)})
        if self.seen and "at" not in self.seen[-1]:
            self.seen[-1]["at"] = now
        await self.push_frame(frame, direction)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stt = DeepgramFluxSTTService(api_key=args.key, url=args.url, sample_rate=args.rate)
    recorder = Recorder()
    task = PipelineTask(
        Pipeline([stt, recorder]),
        params=PipelineParams(audio_in_sample_rate=args.rate, enable_rtvi=False),
        idle_timeout_secs=None,
    )
    runner = PipelineRunner(handle_sigint=False)

    async def feed() -> None:
        audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
        audio += bytes(int(args.tail * args.rate) * 2)
        step = args.rate // 50 * 2  # 20 ms of 16-bit mono
        await asyncio.sleep(1.0)  # the service connects on start
        for offset in range(0, len(audio), step):
            frame = InputAudioRawFrame(
                audio=audio[offset : offset + step], sample_rate=args.rate, num_channels=1
            )
            await task.queue_frame(frame)
            await asyncio.sleep(0.02)
        await task.queue_frame(EndFrame())

    await asyncio.gather(runner.run(task), feed())
    return {"frames": recorder.seen}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the service's url: ws://host:port/v2/listen")
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True, help="raw 16-bit mono PCM")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of silence after")
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
