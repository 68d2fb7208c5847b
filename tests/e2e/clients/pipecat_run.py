"""What the Pipecat pipeline scripts with a local VAD share: their arguments, and a
pipeline of Silero VAD, then the script's STT service, fed a real speech file in real time,
that records the frames the tests look at.

A module of this directory: each script imports it from beside itself (a script's own
directory is first on its path), inside the clients' virtual environment.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class Recorder(FrameProcessor):
    """Keeps the frames the test looks at, in order."""

    def __init__(self, *, finalized: bool) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.finalized = finalized
        """Whether a final transcript's record says if the service marked it finalized."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, TranscriptionFrame):
            final = {"kind": "final", "text": frame.text, "at": now}
            if self.finalized:
                final["finalized"] = frame.finalized
            self.seen.append(final)
        elif isinstance(frame, InterimTranscriptionFrame):
            self.seen.append({"kind": "interim", "text": frame.text, "at": now})
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self.seen.append({"kind": "pause", "at": now})
        elif isinstance(frame, ErrorFrame):
            self.seen.append({"kind": "error", "text": str(frame.error), "at": now})
        await self.push_frame(frame, direction)


async def run(
    args: argparse.Namespace, make_stt: Callable[[], FrameProcessor], *, finalized: bool
) -> dict[str, Any]:
    """Run Silero VAD then the STT service ``make_stt`` builds on ``--audio`` in real time,
    then ``--tail`` seconds of silence; the frames recorded, in order."""
    stt = make_stt()
    recorder = Recorder(finalized=finalized)
    pipeline = Pipeline([VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt, recorder])
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=args.rate, enable_rtvi=False),
        idle_timeout_secs=None,
    )
    runner = PipelineRunner(handle_sigint=False)

    async def feed() -> None:
        audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
        step = args.rate // 50 * 2  # 20 ms of 16-bit mono
        await asyncio.sleep(1.0)  # the service connects on start
        for offset in range(0, len(audio), step):
            frame = InputAudioRawFrame(
                audio=audio[offset : offset + step], sample_rate=args.rate, num_channels=1
            )
            await task.queue_frame(frame)
            await asyncio.sleep(0.02)
        silence = bytes(step)
        for _ in range(int(args.tail / 0.02)):
            await task.queue_frame(
                InputAudioRawFrame(audio=silence, sample_rate=args.rate, num_channels=1)
            )
            await asyncio.sleep(0.02)
        await task.queue_frame(EndFrame())

    await asyncio.gather(runner.run(task), feed())
    return {"frames": recorder.seen}


def arguments() -> argparse.ArgumentParser:
    """The arguments every script takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True, help="raw 16-bit mono PCM")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--tail", type=float, default=2.0, help="seconds of silence after")
    return parser
