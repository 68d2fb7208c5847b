"""Decoder: known values, any split of the input bytes, round trips, G.711 cross-checks."""

from __future__ import annotations

import itertools
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from streamer.audio.decode import ALAW_TABLE, MULAW_TABLE, Decoder
from streamer.audio.formats import AudioFormat, Encoding
from streamer.errors import InvalidFormat

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "audio"

# name -> (bit_depth, is_float, encoding)
KINDS: dict[str, tuple[int, bool, Encoding]] = {
    "u8": (8, False, Encoding.PCM),
    "s16": (16, False, Encoding.PCM),
    "s24": (24, False, Encoding.PCM),
    "s32": (32, False, Encoding.PCM),
    "f32": (32, True, Encoding.PCM),
    "f64": (64, True, Encoding.PCM),
    "mulaw": (8, False, Encoding.MULAW),
    "alaw": (8, False, Encoding.ALAW),
}
CASES = [(kind, channels) for kind in KINDS for channels in (1, 2, 3)]


def make_format(kind: str, channels: int) -> AudioFormat:
    bit_depth, is_float, encoding = KINDS[kind]
    return AudioFormat(channels, 16000, bit_depth, is_float, encoding)


def decode_all(fmt: AudioFormat, chunks: list[bytes]) -> tuple[NDArray[np.float32], Decoder]:
    decoder = Decoder(fmt)
    parts = [decoder.feed(chunk) for chunk in chunks]
    for part in parts:
        assert part.dtype == np.float32
        assert part.shape[0] == fmt.channels
        assert part.flags.c_contiguous
    return np.concatenate(parts, axis=1), decoder


def payload(fmt: AudioFormat, frames: int, seed: int = 0) -> bytes:
    """Random bytes; float formats get finite values in and out of [-1, 1], plus specials."""
    rng = np.random.default_rng(seed)
    count = frames * fmt.channels
    if fmt.is_float:
        values = rng.uniform(-1.5, 1.5, count)
        values[::7] = np.nan
        values[1::11] = np.inf
        dtype = "<f4" if fmt.bit_depth == 32 else "<f8"
        return values.astype(dtype).tobytes()
    return rng.integers(0, 256, count * fmt.sample_bytes, dtype=np.uint8).tobytes()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# Known values ----------------------------------------------------------------------------


def s24_bytes(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(3, "little", signed=True) for v in values)


KNOWN: list[tuple[str, bytes, list[float]]] = [
    ("u8", bytes([0, 128, 255, 64]), [-1.0, 0.0, 127 / 128, -0.5]),
    (
        "s16",
        struct.pack("<5h", -32768, 0, 32767, 1, -1),
        [-1.0, 0.0, 32767 / 32768, 2**-15, -(2**-15)],
    ),
    ("s24", s24_bytes([-1, 0x7FFFFF, -0x800000, 1, 0]), [-(2**-23), 1 - 2**-23, -1.0, 2**-23, 0.0]),
    (
        "s24",
        bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x00, 0x80]),
        [-(2**-23), 1 - 2**-23, -1.0],
    ),
    ("s32", struct.pack("<4i", -(2**31), 0, 1, 2**30), [-1.0, 0.0, 2**-31, 0.5]),
    (
        "f32",
        struct.pack("<6f", 0.5, -0.25, 2.0, float("nan"), float("-inf"), 1.0),
        [0.5, -0.25, 1.0, 0.0, -1.0, 1.0],
    ),
    (
        "f64",
        struct.pack("<4d", 0.1, -3.0, float("inf"), float("nan")),
        [float(np.float32(0.1)), -1.0, 1.0, 0.0],
    ),
    # G.711 µ-law: 0xFF and 0x7F are the two zeros; 0x00 / 0x80 the extremes (±32124).
    (
        "mulaw",
        bytes([0xFF, 0x7F, 0x00, 0x80, 0xFE, 0x7E]),
        [0, 0, -32124 / 32768, 32124 / 32768, 8 / 32768, -8 / 32768],
    ),
    # G.711 A-law: 0xD5 / 0x55 are ±8 (no zero code); 0xAA / 0x2A the extremes (±32256).
    (
        "alaw",
        bytes([0xD5, 0x55, 0xAA, 0x2A]),
        [8 / 32768, -8 / 32768, 32256 / 32768, -32256 / 32768],
    ),
]


@pytest.mark.parametrize(("kind", "data", "expected"), KNOWN, ids=[k[0] for k in KNOWN])
def test_known_values(kind: str, data: bytes, expected: list[float]) -> None:
    out, decoder = decode_all(make_format(kind, 1), [data])
    np.testing.assert_array_equal(out, np.array([expected], dtype=np.float32))
    assert decoder.pending_bytes == 0
    assert decoder.frames_decoded == len(expected)


def test_channels_are_deinterleaved() -> None:
    frames = 50
    ramp = np.arange(frames, dtype=np.int16) * 100
    interleaved = np.stack([ramp, -ramp, ramp // 2], axis=1)
    out, _ = decode_all(make_format("s16", 3), [interleaved.astype("<i2").tobytes()])
    np.testing.assert_array_equal(out, interleaved.T.astype(np.float32) / 32768)


@pytest.mark.parametrize(("kind", "channels"), CASES)
def test_output_in_range_and_shape(kind: str, channels: int) -> None:
    fmt = make_format(kind, channels)
    out, decoder = decode_all(fmt, [payload(fmt, 101)])
    assert out.shape == (channels, 101)
    assert np.all(np.abs(out) <= 1.0)
    assert decoder.frames_decoded == 101


def test_g711_tables_match_the_standard_reference() -> None:
    # Straight transcription of the reference expansion (per code, no numpy), as a second
    # opinion on the vectorised tables.
    def ulaw(code: int) -> int:
        u = ~code & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        return 0x84 - t if u & 0x80 else t - 0x84

    def alaw(code: int) -> int:
        a = code ^ 0x55
        t = (a & 0x0F) << 4
        seg = (a & 0x70) >> 4
        t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1) if seg > 1 else t + 0x108
        return t if a & 0x80 else -t

    assert [round(v * 32768) for v in MULAW_TABLE] == [ulaw(c) for c in range(256)]
    assert [round(v * 32768) for v in ALAW_TABLE] == [alaw(c) for c in range(256)]


# Any split of the bytes gives the same samples --------------------------------------------


@pytest.mark.parametrize(("kind", "channels"), CASES)
def test_one_byte_at_a_time(kind: str, channels: int) -> None:
    fmt = make_format(kind, channels)
    data = payload(fmt, 40)
    whole, _ = decode_all(fmt, [data])
    bytewise, decoder = decode_all(fmt, [data[i : i + 1] for i in range(len(data))])
    np.testing.assert_array_equal(bytewise, whole)
    assert decoder.frames_decoded == 40
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize(("kind", "channels"), CASES)
def test_trailing_partial_frame_is_held(kind: str, channels: int) -> None:
    fmt = make_format(kind, channels)
    data = payload(fmt, 41)
    body, tail = data[: -fmt.frame_bytes], data[-fmt.frame_bytes :]
    whole, _ = decode_all(fmt, [data])
    for cut in range(1, fmt.frame_bytes):
        decoder = Decoder(fmt)
        first = decoder.feed(body + tail[:cut])
        np.testing.assert_array_equal(first, whole[:, :40])
        assert decoder.pending_bytes == cut
        assert decoder.frames_decoded == 40
        last = decoder.feed(tail[cut:])
        np.testing.assert_array_equal(last, whole[:, 40:])
        assert decoder.pending_bytes == 0
        assert decoder.frames_decoded == 41


def test_empty_chunks_are_harmless() -> None:
    decoder = Decoder(make_format("s24", 2))
    assert decoder.feed(b"").shape == (2, 0)
    assert decoder.feed(b"\x01\x02").shape == (2, 0)
    assert decoder.feed(b"").shape == (2, 0)
    assert decoder.pending_bytes == 2
    assert decoder.frames_decoded == 0


@pytest.mark.parametrize(("kind", "channels"), CASES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_splits(kind: str, channels: int, data: st.DataObject) -> None:
    fmt = make_format(kind, channels)
    raw = payload(fmt, 33, seed=channels)
    tail = data.draw(st.integers(0, fmt.frame_bytes - 1), label="tail")
    raw_with_tail = raw + bytes(tail)
    cuts = data.draw(st.lists(st.integers(0, len(raw_with_tail)), max_size=12), label="cuts")
    whole, _ = decode_all(fmt, [raw])
    pieces, decoder = decode_all(fmt, split(raw_with_tail, cuts))
    np.testing.assert_array_equal(pieces, whole)
    assert decoder.pending_bytes == tail
    assert decoder.frames_decoded == 33


# Round trips -----------------------------------------------------------------------------


def encode_pcm(x: NDArray[np.float64], bit_depth: int) -> bytes:
    """Interleaved floats -> integer PCM bytes, rounding to the nearest step."""
    if bit_depth == 8:
        return bytes((np.clip(np.round(x * 128), -128, 127) + 128).astype(np.uint8).tobytes())
    full = 2 ** (bit_depth - 1)
    ints: NDArray[np.int32] = np.clip(np.round(x * full), -full, full - 1).astype("<i4")
    if bit_depth == 24:
        return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return ints.astype("<i2" if bit_depth == 16 else "<i4").tobytes()


@pytest.mark.parametrize("bit_depth", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pcm_round_trip(bit_depth: int, channels: int) -> None:
    step = 2.0 ** -(bit_depth - 1)
    # Integer PCM reaches -1 but stops one step short of +1.
    x = np.random.default_rng(bit_depth).uniform(-1, 1 - step, (500, channels))
    x[:2] = [[-1.0] * channels, [1 - step] * channels]
    fmt = AudioFormat(channels, 16000, bit_depth, False)
    out, _ = decode_all(fmt, [encode_pcm(x.reshape(-1), bit_depth)])
    # Half a quantisation step, plus float32 rounding of the result.
    np.testing.assert_allclose(out, x.T, rtol=0, atol=step / 2 + 2**-24)


@pytest.mark.parametrize("bit_depth", [32, 64])
def test_float_round_trip(bit_depth: int) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (300, 2))
    dtype = "<f4" if bit_depth == 32 else "<f8"
    out, _ = decode_all(AudioFormat(2, 16000, bit_depth, True), [x.astype(dtype).tobytes()])
    np.testing.assert_array_equal(out, x.T.astype(np.float32))


# G.711 against independent decoders ------------------------------------------------------


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_g711_matches_audioop(encoding: Encoding) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    to_law = audioop.lin2ulaw if encoding is Encoding.MULAW else audioop.lin2alaw
    from_law = audioop.ulaw2lin if encoding is Encoding.MULAW else audioop.alaw2lin
    every_code = bytes(range(256))
    speechlike = np.random.default_rng(7).normal(0, 4000, 4000).clip(-32768, 32767)
    encoded = to_law(speechlike.astype("<i2").tobytes(), 2)
    for coded in (every_code, encoded):
        expected = np.frombuffer(from_law(coded, 2), "<i2") / 32768
        out, _ = decode_all(AudioFormat(1, 8000, 8, False, encoding), [coded])
        np.testing.assert_array_equal(out[0], expected.astype(np.float32))


def wav_data_chunk(path: Path) -> bytes:
    """The bytes of a RIFF/WAVE file's ``data`` chunk."""
    blob = path.read_bytes()
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE"
    pos = 12
    while pos + 8 <= len(blob):
        tag, size = blob[pos : pos + 4], int.from_bytes(blob[pos + 4 : pos + 8], "little")
        if tag == b"data":
            return blob[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise AssertionError(f"no data chunk in {path.name}")


def test_mulaw_matches_soundfile_on_a_real_recording() -> None:
    path = FIXTURES / "cross_8k.wav"
    info = soundfile.info(str(path))
    assert info.subtype == "ULAW" and info.channels == 1
    reference, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    coded = wav_data_chunk(path)
    fmt = AudioFormat(info.channels, rate, 8, False, Encoding.MULAW)
    whole, _ = decode_all(fmt, [coded])
    np.testing.assert_array_equal(whole, reference.T)
    # The same recording in 100 ms packets, as a client would send it.
    packets, _ = decode_all(fmt, [coded[i : i + 800] for i in range(0, len(coded), 800)])
    np.testing.assert_array_equal(packets, whole)


def test_invalid_format_is_refused() -> None:
    with pytest.raises(InvalidFormat, match="bit_depth"):
        Decoder(AudioFormat(1, 16000, 12, False))
