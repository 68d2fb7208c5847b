"""Pipecat's own view of TTFS: its ``SileroVADAnalyzer`` (stop_secs 0.2) and
``DeepgramSTTService`` (base URL changed, nothing else), fed 16 kHz speech at real time in
20 ms frames. Runs in the Pipecat client venv; ``bench_ttfs.py --pipecat`` starts it.

For each ``VADUserStoppedSpeakingFrame`` (after which the service sends ``Finalize``), the
arrival at the service of the ``from_finalize`` final that answers it, when it has words
(the service then pushes it as a finalized ``TranscriptionFrame``), minus the end of
speech (the stop minus ``stop_secs``). Prints JSON.

    python pipecat_ttfs.py --url ws://host:port --audio speech.raw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.deepgram.stt import DeepgramSTTService

RATE = 16000
STOP_SECS = 0.2


class Timer(FrameProcessor):
    """Each VAD stop's end of speech, in order (after the service has sent ``Finalize``)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[float] = []
        self.stops = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self.stops += 1
            self.waiting.append(time.monotonic() - STOP_SECS)
        await self.push_frame(frame, direction)


class TimedDeepgram(DeepgramSTTService):
    """Pipecat's service as it is, noting when each ``from_finalize`` final reaches it.

    Each ``Finalize`` gets one ``from_finalize`` final (empty when the text had already
    come), so they answer the stops in order; a non-empty one is the turn's transcript,
    which the service pushes on as a finalized ``TranscriptionFrame``.
    """

    def __init__(self, timer: Timer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timer = timer
        self.ttfs: list[float] = []
        self.empty = 0

    async def _on_message(self, message: Any) -> None:
        now = time.monotonic()
        await super()._on_message(message)
        if getattr(message, "is_final", False) and getattr(message, "from_finalize", False):
            if self.timer.waiting:
                speech_end = self.timer.waiting.pop(0)
                if message.channel.alternatives[0].transcript:
                    self.ttfs.append(now - speech_end)
                else:
                    self.empty += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    timer = Timer()
    stt = TimedDeepgram(timer, api_key="no-key", base_url=args.url, sample_rate=RATE)
    vad = SileroVADAnalyzer(params=VADParams(stop_secs=STOP_SECS))
    pipeline = Pipeline([VADProcessor(vad_analyzer=vad), stt, timer])
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE, enable_rtvi=False),
        idle_timeout_secs=None,
    )
    runner = PipelineRunner(handle_sigint=False)

    async def feed() -> None:
        audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
        step = RATE // 50 * 2  # 20 ms of 16-bit mono
        await asyncio.sleep(1.0)  # the service connects on start
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(audio), step)):
            wait = start + i * 0.02 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await task.queue_frame(
                InputAudioRawFrame(
                    audio=audio[offset : offset + step], sample_rate=RATE, num_channels=1
                )
            )
        await asyncio.sleep(2.0)  # the last answers
        await task.queue_frame(EndFrame())

    await asyncio.gather(runner.run(task), feed())
    return {"stops": timer.stops, "ttfs": stt.ttfs, "empty": stt.empty}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--audio", required=True, help="raw 16-bit mono PCM at 16 kHz")
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
