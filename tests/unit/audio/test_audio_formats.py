"""AudioFormat.validate: every field out of bounds is reported by name."""

from __future__ import annotations

import pytest

from streamer.audio.formats import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioFormat,
    Encoding,
)
from streamer.errors import ErrorCode, InvalidFormat

VALID = [
    AudioFormat(1, 16000, 16, False),
    AudioFormat(MAX_CHANNELS, MIN_SAMPLE_RATE, 8, False),
    AudioFormat(2, MAX_SAMPLE_RATE, 24, False),
    AudioFormat(3, 44100, 32, False),
    AudioFormat(1, 48000, 32, True),
    AudioFormat(2, 22050, 64, True),
    AudioFormat(1, 8000, 8, False, Encoding.MULAW),
    AudioFormat(1, 8000, 8, False, Encoding.ALAW),
]

INVALID = [
    (AudioFormat(0, 16000, 16, False), "channels"),
    (AudioFormat(1000, 16000, 16, False), "channels"),
    (AudioFormat(MAX_CHANNELS + 1, 16000, 16, False), "channels"),
    (AudioFormat(1, 7999, 16, False), "sample_rate"),
    (AudioFormat(1, 192001, 16, False), "sample_rate"),
    (AudioFormat(1, 16000, 12, False), "bit_depth"),
    (AudioFormat(1, 16000, 0, False), "bit_depth"),
    (AudioFormat(1, 16000, 16, True), "bit_depth"),
    (AudioFormat(1, 16000, 8, True), "bit_depth"),
    (AudioFormat(1, 8000, 16, False, Encoding.MULAW), "bit_depth"),
    (AudioFormat(1, 8000, 16, False, Encoding.ALAW), "bit_depth"),
    (AudioFormat(1, 8000, 8, True, Encoding.MULAW), "is_float"),
    (AudioFormat(1, 8000, 8, False, "opus"), "encoding"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("fmt", VALID, ids=repr)
def test_valid_formats_pass(fmt: AudioFormat) -> None:
    fmt.validate()


@pytest.mark.parametrize(("fmt", "field"), INVALID, ids=lambda v: repr(v))
def test_invalid_format_names_the_field(fmt: AudioFormat, field: str) -> None:
    with pytest.raises(InvalidFormat) as info:
        fmt.validate()
    assert info.value.message.startswith(field + " ")
    assert info.value.code is ErrorCode.INVALID_FORMAT


@pytest.mark.parametrize(
    ("fmt", "allowed"),
    [
        (AudioFormat(0, 16000, 16, False), "1 to 32"),
        (AudioFormat(1, 1, 16, False), "8000 to 192000"),
        (AudioFormat(1, 16000, 12, False), "8, 16, 24, 32"),
        (AudioFormat(1, 16000, 16, True), "32, 64"),
        (AudioFormat(1, 8000, 16, False, Encoding.MULAW), "must be 8"),
    ],
    ids=repr,
)
def test_message_says_what_is_allowed(fmt: AudioFormat, allowed: str) -> None:
    with pytest.raises(InvalidFormat, match=allowed):
        fmt.validate()


def test_bool_is_not_an_integer_field() -> None:
    with pytest.raises(InvalidFormat, match=r"^channels"):
        AudioFormat(True, 16000, 16, False).validate()


@pytest.mark.parametrize(
    ("fmt", "sample_bytes", "frame_bytes"),
    [
        (AudioFormat(1, 16000, 8, False), 1, 1),
        (AudioFormat(2, 16000, 16, False), 2, 4),
        (AudioFormat(3, 16000, 24, False), 3, 9),
        (AudioFormat(2, 16000, 64, True), 8, 16),
        (AudioFormat(2, 8000, 8, False, Encoding.ALAW), 1, 2),
    ],
    ids=repr,
)
def test_sizes(fmt: AudioFormat, sample_bytes: int, frame_bytes: int) -> None:
    assert fmt.sample_bytes == sample_bytes
    assert fmt.frame_bytes == frame_bytes


def test_encoding_values_are_the_wire_names() -> None:
    assert [e.value for e in Encoding] == ["pcm", "mulaw", "alaw"]
    assert Encoding("mulaw") is Encoding.MULAW
