"""The layouts of raw audio a client may send, and the rules that make one valid."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streamer.errors import InvalidFormat

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 32

PCM_INT_BIT_DEPTHS = (8, 16, 24, 32)
"""8 is unsigned (offset 128); the others are signed little-endian."""
PCM_FLOAT_BIT_DEPTHS = (32, 64)
"""IEEE 754 little-endian."""


class Encoding(StrEnum):
    """How each sample is coded: linear PCM or one of the G.711 companding laws."""

    PCM = "pcm"
    MULAW = "mulaw"
    ALAW = "alaw"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choices(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Interleaved little-endian frames of ``channels`` samples each.

    Construction does not check anything; call :meth:`validate` on formats that come from
    outside, so that a bad one is reported as ``InvalidFormat`` naming the field at fault.
    """

    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool
    encoding: Encoding = Encoding.PCM

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of one channel."""
        return self.bit_depth // 8

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame: one sample of every channel."""
        return self.sample_bytes * self.channels

    def validate(self) -> None:
        """Raise ``InvalidFormat`` naming the first field out of bounds, and what it allows."""
        if not _is_int(self.channels) or not 1 <= self.channels <= MAX_CHANNELS:
            raise InvalidFormat(
                f"channels must be an integer from 1 to {MAX_CHANNELS}, got {self.channels!r}"
            )
        if not _is_int(self.sample_rate) or not (
            MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE
        ):
            raise InvalidFormat(
                f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, "
                f"got {self.sample_rate!r}"
            )
        if not isinstance(self.is_float, bool):
            raise InvalidFormat(f"is_float must be true or false, got {self.is_float!r}")
        try:
            encoding = Encoding(self.encoding)
        except ValueError:
            allowed = ", ".join(e.value for e in Encoding)
            raise InvalidFormat(
                f"encoding must be one of {allowed}, got {self.encoding!r}"
            ) from None
        if encoding is not Encoding.PCM:
            if self.is_float:
                raise InvalidFormat(f"is_float must be false with encoding {encoding.value}")
            if not _is_int(self.bit_depth) or self.bit_depth != 8:
                raise InvalidFormat(
                    f"bit_depth must be 8 with encoding {encoding.value}, got {self.bit_depth!r}"
                )
            return
        allowed_depths = PCM_FLOAT_BIT_DEPTHS if self.is_float else PCM_INT_BIT_DEPTHS
        if not _is_int(self.bit_depth) or self.bit_depth not in allowed_depths:
            kind = "float" if self.is_float else "integer"
            raise InvalidFormat(
                f"bit_depth must be one of {_choices(allowed_depths)} for {kind} PCM, "
                f"got {self.bit_depth!r}"
            )
