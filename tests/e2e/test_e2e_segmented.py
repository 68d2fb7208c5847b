"""The segmented route end to end: the real client and server, real speech.

The reference for each file is the same VAD and segmenter run over the whole file at once
(resampled the way the server resamples), so the streamed segments must match it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat, Encoding
from streamer.audio.resample import ChannelResamplers
from streamer.client import LoadedAudio, load_audio, stream_file
from streamer.client.websocket import open_connection
from streamer.segmentation.segmenter import SPECULATIVE_PAD_MS, Segment, Segmenter, VadParams
from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE, VadEngine

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
RATE = VAD_SAMPLE_RATE


def reference(audio: LoadedAudio, channel: int = 0) -> list[tuple[float, float]]:
    """Final segments of one channel, from the whole file at once."""
    fmt = audio.format
    decoded = Decoder(
        AudioFormat(
            channels=fmt["channels"],
            sample_rate=fmt["sample_rate"],
            bit_depth=fmt["bit_depth"],
            is_float=fmt.get("is_float", False),
            encoding=Encoding(fmt.get("encoding", "pcm")),
        )
    ).feed(audio.data)
    resamplers = ChannelResamplers(fmt["channels"], fmt["sample_rate"], RATE)
    head, tail = resamplers.process(decoded), resamplers.flush()
    samples = np.concatenate([head[channel], tail[channel]]).astype(np.float32)
    whole = len(samples) // FRAME_SAMPLES * FRAME_SAMPLES
    frames = samples[:whole].reshape(-1, FRAME_SAMPLES)
    with VadEngine() as engine:
        probs = engine.probabilities_sync(engine.open_stream(), frames)
    # A server's default streams decode finals ahead at pauses: their cut ends a segment there.
    segmenter = Segmenter(VadParams(), speculate=True, speculate_pad_ms=SPECULATIVE_PAD_MS)
    events = segmenter.push_frames(frames, probs) + segmenter.flush(samples[whole:])
    return [
        (round(e.start / RATE, 6), round(e.end / RATE, 6))
        for e in events
        if isinstance(e, Segment) and e.is_final
    ]


def check_events(events: list[dict[str, Any]], channel: int = 0) -> list[tuple[float, float]]:
    """Per channel: active, interims, inactive, final, in that order; returns the finals."""
    assert events[0]["type"] == "ready" and events[-1]["type"] == "done"
    mine = [e for e in events if e.get("channel") == channel]
    finals: list[tuple[float, float]] = []
    open_at: float | None = None
    for e in mine:
        if e["type"] == "active":
            assert open_at is None, "speech started twice"
            open_at = e["time"]
            assert not finals or e["time"] >= finals[-1][1], "segments overlap"
        elif e["type"] == "segment" and not e["is_final"]:
            assert open_at is not None and e["start_time"] == open_at
        elif e["type"] == "inactive":
            assert open_at is not None
            closed_at = e["time"]
        elif e["type"] == "segment":
            assert open_at is not None and e["start_time"] == open_at
            assert e["end_time"] == closed_at
            assert e["count"] == round((e["end_time"] - e["start_time"]) * RATE)
            finals.append((e["start_time"], e["end_time"]))
            open_at = None
        else:
            pytest.fail(f"unexpected event {e}")
    assert open_at is None, "a segment was left open"
    return finals


@pytest.mark.parametrize(
    ("name", "segments"),
    [
        ("jfk.wav", None),
        ("harvard_16k.wav", None),
        ("front_center_48k.wav", 1),
        ("big_dog_8k.wav", 1),
        ("cross_8k.wav", 1),
        ("modem_noise_8k.wav", 0),
    ],
)
async def test_streamed_segments_equal_the_whole_file_reference(
    server: Any, name: str, segments: int | None
) -> None:
    audio = load_audio(AUDIO / name)
    result = await stream_file(server.ws("segmented"), audio, chunk_bytes=1234)
    assert result.ok, result.errors
    finals = check_events(result.events)
    assert finals == reference(audio)
    if segments is not None:
        assert len(finals) == segments
    else:
        assert len(finals) >= 1
        speech = sum(end - start for start, end in finals)
        assert speech > 0.6 * audio.duration  # these files are mostly speech


async def test_interim_results_arrive_while_speech_goes_on_in_real_time(server: Any) -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    result = await stream_file(
        server.ws("segmented"),
        audio,
        real_time=True,
        interim=True,
        extra_start={"interim_interval": 0.5},
    )
    assert result.ok
    [(start, end)] = check_events(result.events)
    interims = [e for e in result.segments if not e["is_final"]]
    assert len(interims) >= int((end - start) / 0.5) - 1
    ends = [e["end_time"] for e in interims]
    assert ends == sorted(ends) and ends[-1] < end
    # The k-th interim covers at least k intervals of the segment (frames are 32 ms).
    assert all(e - start >= 0.5 * k - 1e-6 for k, e in enumerate(ends, 1)), (start, ends)
    assert all(e - start < 0.5 * k + 0.1 for k, e in enumerate(ends, 1)), (start, ends)
    # Each interim arrives before the final: they are sent while the audio is still coming.
    final_at = result.arrivals[result.events.index(result.segments[-1])]
    assert all(result.arrivals[result.events.index(e)] < final_at for e in interims)


async def test_stop_in_mid_speech_closes_the_segment_at_the_end_of_the_audio(
    server: Any,
) -> None:
    whole = load_audio(AUDIO / "jfk.wav")
    cut = 2 * RATE * 2  # 2.0 s of 16-bit mono: inside the first sentence
    audio = LoadedAudio(data=whole.data[:cut], format=whole.format, frames=cut // 2)
    result = await stream_file(server.ws("segmented"), audio, interim=True)
    finals = check_events(result.events)
    assert finals[-1][1] == 2.0
    types = [e["type"] for e in result.events]
    assert types[-3:] == ["inactive", "segment", "done"]


async def test_finalize_forces_finals_and_the_stream_goes_on(server: Any) -> None:
    audio = load_audio(AUDIO / "jfk.wav")
    ws = await open_connection(server.ws("segmented"))
    events: list[dict[str, Any]] = []
    async with ws:
        await ws.send(json.dumps({"request": "start", "format": audio.format}))
        cut = int(1.5 * RATE) * 2
        await ws.send(audio.data[:cut])
        await ws.send(json.dumps({"request": "finalize"}))
        while not (events and events[-1]["type"] == "segment" and events[-1]["is_final"]):
            events.append(json.loads(await ws.recv()))
        assert events[-1]["end_time"] == 1.5
        assert events[-2] == {"type": "inactive", "channel": 0, "time": 1.5}
        await ws.send(audio.data[cut:])
        await ws.send(json.dumps({"request": "stop"}))
        while events[-1]["type"] != "done":
            events.append(json.loads(await ws.recv()))
    finals = check_events(events)
    assert finals[0][1] == 1.5 and len(finals) >= 3
    assert events[-1]["audio_seconds"] == 11.0


async def test_stereo_speech_on_one_channel_gives_segments_for_that_channel_only(
    server: Any, tmp_path: Path
) -> None:
    speech, rate = sf.read(AUDIO / "big_dog_8k.wav", dtype="int16")
    stereo = np.zeros((len(speech) + rate, 2), dtype=np.int16)
    stereo[rate // 2 : rate // 2 + len(speech), 1] = speech
    path = tmp_path / "right_only.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    audio = load_audio(path)
    result = await stream_file(server.ws("segmented"), audio, interim=True)
    assert result.ok
    assert check_events(result.events, channel=0) == []
    assert check_events(result.events, channel=1) == reference(audio, channel=1)
    assert len(reference(audio, channel=1)) == 1
    assert {e.get("channel") for e in result.events[1:-1]} == {1}
