"""Audio files into the bytes the protocol carries, in the file's own format.

Resampling is the server's job: a client sends the rate, channels and sample coding its
file has, so that what the server is measured on is what a real client would cost it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

DEFAULT_CHUNK_SECONDS = 0.1


class AudioFileError(Exception):
    """The file cannot be read, or holds audio the protocol cannot carry."""


@dataclass(frozen=True, slots=True)
class LoadedAudio:
    """Audio ready to send: interleaved little-endian frames and the ``format`` describing them."""

    data: bytes
    format: dict[str, Any]
    """The ``format`` object of the ``start`` request."""
    frames: int

    @property
    def channels(self) -> int:
        return int(self.format["channels"])

    @property
    def sample_rate(self) -> int:
        return int(self.format["sample_rate"])

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel."""
        return int(self.format["bit_depth"]) // 8 * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.sample_rate

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate

    def chunk_bytes(self, seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
        """Bytes of ``seconds`` of audio, in whole frames (at least one)."""
        return max(1, round(seconds * self.sample_rate)) * self.frame_bytes


_WAVE_PCM = 0x0001
_WAVE_FLOAT = 0x0003
_WAVE_ALAW = 0x0006
_WAVE_MULAW = 0x0007
_WAVE_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class WavLayout:
    """Where a WAV file's samples are and how they are coded (from its ``fmt `` chunk)."""

    format_tag: int
    """The WAVE format tag; for WAVE_FORMAT_EXTENSIBLE, the tag of its sub-format."""
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int
    data_offset: int
    data_length: int


def parse_wav(raw: bytes) -> WavLayout:
    """Find the ``fmt `` and ``data`` chunks of a RIFF/WAVE (or RF64) file.

    A file cut short keeps the data it has, as audio tools do.
    """
    if len(raw) < 12 or raw[:4] not in (b"RIFF", b"RF64", b"BW64") or raw[8:12] != b"WAVE":
        raise AudioFileError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    ds64_data_size: int | None = None
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = pos + 8
        if chunk_id == b"ds64" and size >= 16 and body + 16 <= len(raw):
            (ds64_data_size,) = struct.unpack_from("<Q", raw, body + 8)
        elif chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(raw):
                raise AudioFileError("the fmt chunk is too short")
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", raw, body)
            if tag == _WAVE_EXTENSIBLE and size >= 40 and body + 26 <= len(raw):
                # The sub-format GUID starts with the plain format tag.
                (tag,) = struct.unpack_from("<H", raw, body + 24)
            fmt = (tag, channels, rate, block_align, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFileError("the data chunk comes before the fmt chunk")
            if size == _UNKNOWN_SIZE:
                size = ds64_data_size if ds64_data_size is not None else len(raw) - body
            tag, channels, rate, block_align, bits = fmt
            return WavLayout(
                format_tag=tag,
                channels=channels,
                sample_rate=rate,
                block_align=block_align,
                bits_per_sample=bits,
                data_offset=body,
                data_length=max(0, min(size, len(raw) - body)),
            )
        pos = body + size + (size & 1)  # chunks are padded to an even size
    raise AudioFileError("no data chunk")


def _wav_format(layout: WavLayout) -> dict[str, Any] | None:
    """The protocol format that carries this WAV's samples unchanged, or None if none does."""
    if layout.channels < 1 or layout.block_align % layout.channels:
        return None
    # The container size, not the valid bits: 20-bit samples in 24-bit words are sent as 24.
    bits = layout.block_align // layout.channels * 8
    base: dict[str, Any] = {"channels": layout.channels, "sample_rate": layout.sample_rate}
    tag = layout.format_tag
    if tag == _WAVE_PCM and bits in (8, 16, 24, 32):
        return {**base, "bit_depth": bits, "is_float": False}
    if tag == _WAVE_FLOAT and bits in (32, 64):
        return {**base, "bit_depth": bits, "is_float": True}
    if tag in (_WAVE_MULAW, _WAVE_ALAW) and bits == 8:
        encoding = "mulaw" if tag == _WAVE_MULAW else "alaw"
        return {**base, "bit_depth": 8, "is_float": False, "encoding": encoding}
    return None


# soundfile subtype -> (dtype to decode to, bit_depth, is_float); anything else is int16.
_DECODE_AS: dict[str, tuple[str, int, bool]] = {
    "PCM_24": ("<i4", 32, False),
    "PCM_32": ("<i4", 32, False),
    "FLOAT": ("<f4", 32, True),
    "DOUBLE": ("<f8", 64, True),
}


def _decode(path: str, info: Any) -> LoadedAudio:
    """Decode with libsndfile to the nearest linear PCM, at the file's own rate and channels."""
    dtype, bit_depth, is_float = _DECODE_AS.get(str(info.subtype), ("<i2", 16, False))
    try:
        samples, rate = sf.read(path, dtype=np.dtype(dtype).name, always_2d=True)
    except (RuntimeError, OSError) as error:
        raise AudioFileError(f"{path}: {error}") from None
    data = np.ascontiguousarray(samples, dtype=dtype).tobytes()
    fmt = {
        "channels": int(samples.shape[1]),
        "sample_rate": int(rate),
        "bit_depth": bit_depth,
        "is_float": is_float,
    }
    return LoadedAudio(data=data, format=fmt, frames=int(samples.shape[0]))


def load_audio(path: str | os.PathLike[str]) -> LoadedAudio:
    """Read a WAV, FLAC or OGG file (or anything libsndfile reads) into sendable audio.

    WAV files whose samples the protocol carries as they are (PCM 8 to 32 bits, float 32 and
    64, µ-law, A-law) are sent byte for byte; other files are decoded to linear PCM.
    """
    name = os.fspath(path)
    try:
        info = sf.info(name)
    except (RuntimeError, OSError) as error:
        raise AudioFileError(f"{name}: {error}") from None
    if str(info.format) not in ("WAV", "WAVEX", "RF64"):
        return _decode(name, info)
    try:
        raw = Path(name).read_bytes()
    except OSError as error:
        raise AudioFileError(f"{name}: {error}") from None
    try:
        layout = parse_wav(raw)
    except AudioFileError as error:
        raise AudioFileError(f"{name}: {error}") from None
    fmt = _wav_format(layout)
    if fmt is None:
        return _decode(name, info)
    frames = layout.data_length // layout.block_align
    ours = (layout.sample_rate, layout.channels, frames)
    theirs = (int(info.samplerate), int(info.channels), int(info.frames))
    if ours != theirs:
        raise AudioFileError(
            f"{name}: the WAV header says (rate, channels, frames) = {ours}, "
            f"libsndfile says {theirs}"
        )
    start = layout.data_offset
    return LoadedAudio(
        data=raw[start : start + frames * layout.block_align], format=fmt, frames=frames
    )
