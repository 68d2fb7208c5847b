"""The Python client: stream audio to a streamer server and read typed events back.

::

    async with connect("ws://127.0.0.1:8080/api/v1/segmented", format=audio.format) as stream:
        await stream.send(pcm)
        await stream.stop()
        async for event in stream:  # Ready was awaited by connect; SegmentResult, ..., Done
            ...

``grpc://HOST:PORT/ROUTE`` URLs take the same calls over gRPC. :func:`stream_file` sends a
whole file (paced in real time when asked) and returns a :class:`StreamResult`.
``client.websocket`` and ``client.grpc`` run streams on connections of one's own.
"""

from streamer.client.audio import AudioFileError, LoadedAudio, load_audio
from streamer.client.connect import connect, stream_file
from streamer.client.errors import StreamClosed, StreamFailed, StreamRefused
from streamer.client.files import FileOptions, StreamResult
from streamer.client.stream import Opening, Received, Stream
from streamer.events import (
    Done,
    Event,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
)

__all__ = [
    "AudioFileError",
    "Done",
    "Event",
    "FileOptions",
    "LoadedAudio",
    "Opening",
    "Ready",
    "Received",
    "SegmentResult",
    "SpeechEnded",
    "SpeechStarted",
    "Stream",
    "StreamClosed",
    "StreamError",
    "StreamFailed",
    "StreamRefused",
    "StreamResult",
    "connect",
    "load_audio",
    "stream_file",
]
