"""Where the Whisper model runs: the CPU or a CUDA GPU, and what follows from the choice.

``place`` turns ``whisper.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
``Placement``, asking a probe what GPUs are usable; the choice itself is pure, so tests
give it any probe. ``auto`` takes the first GPU when one is usable and the CPU otherwise;
``cuda`` without a usable GPU raises ``DeviceUnavailable`` (the server then refuses to
start). The compute type and the batch size default per device (``DEVICE_DEFAULTS``).

CTranslate2 loads cuBLAS by name at its first GPU call. The ``gpu`` extra installs it as
a wheel (``nvidia-cublas-cu12``), whose directory is on no loader path; ``load_cuda_libraries``
loads those files first, so the name is already resolved and nobody sets
``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from streamer.inference.model import UnsupportedModel

log = logging.getLogger(__name__)

DeviceKind = Literal["cpu", "cuda"]

DEVICE_PATTERN: Final = r"^(auto|cpu|cuda(:\d+)?)$"
"""The values ``whisper.device`` takes."""

GPU_HINT: Final = "pip install 'streamer[gpu]' installs the CUDA libraries"


@dataclass(frozen=True, slots=True)
class DeviceDefaults:
    """What a setting left unset becomes on one kind of device."""

    compute_type: str
    max_batch_size: int


DEVICE_DEFAULTS: Final[dict[DeviceKind, DeviceDefaults]] = {
    # int8 halves the CPU's cost against float32 at the same words; a batch past 8 only
    # queues segments behind each other on a few cores.
    "cpu": DeviceDefaults(compute_type="int8", max_batch_size=8),
    # float16 runs on the GPU's tensor cores; a GPU decodes a batch's segments side by
    # side, so a larger batch costs little more per call and grows with the load instead
    # of the queue (32: a starting point, for bench_whisper.py --device cuda to confirm).
    "cuda": DeviceDefaults(compute_type="float16", max_batch_size=32),
}


class DeviceUnavailable(UnsupportedModel):
    """``whisper.device`` names a GPU that this machine cannot use."""


@dataclass(frozen=True, slots=True)
class GpuProbe:
    """What a machine offers: how many CUDA devices, and why none can be used (or None)."""

    devices: int
    why_not: str | None = None

    @property
    def usable(self) -> bool:
        return self.devices > 0 and self.why_not is None


@dataclass(frozen=True, slots=True)
class Placement:
    """The device chosen, its index (for CUDA), and why it was chosen."""

    kind: DeviceKind
    index: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        """``cpu`` or ``cuda:N``: as health and ``/metrics`` report it."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def defaults(self) -> DeviceDefaults:
        return DEVICE_DEFAULTS[self.kind]


def settle(
    placement: Placement, compute_type: str | None, max_batch_size: int | None
) -> DeviceDefaults:
    """The compute type and batch size on the placement's device: those set, or its own."""
    own = placement.defaults
    return DeviceDefaults(compute_type or own.compute_type, max_batch_size or own.max_batch_size)


def place(requested: str, probe: Callable[[], GpuProbe] | None = None) -> Placement:
    """The device ``requested`` (a ``whisper.device`` value) resolves to on this machine.

    Raises ``DeviceUnavailable`` when a GPU is asked for and none (or not that one) is
    usable; ``ValueError`` for a value that is no device.
    """
    match = re.fullmatch(DEVICE_PATTERN, requested)
    if match is None:
        raise ValueError(f"not a device: {requested!r} (auto, cpu, cuda or cuda:N)")
    if requested == "cpu":
        return Placement("cpu", reason="whisper.device = 'cpu'")
    found = (probe or probe_gpus)()
    if requested == "auto":
        if found.usable:
            return Placement("cuda", 0, f"auto: {found.devices} usable CUDA device(s)")
        return Placement("cpu", reason=f"auto: no usable GPU: {found.why_not or 'none found'}")
    index = int(requested.partition(":")[2] or 0)
    if not found.usable:
        why = found.why_not or "no CUDA device was found"
        raise DeviceUnavailable(f"whisper.device = {requested!r}, but {why}")
    if index >= found.devices:
        raise DeviceUnavailable(
            f"whisper.device = {requested!r}, but this machine has {found.devices} CUDA "
            f"device(s) (cuda:0 to cuda:{found.devices - 1})"
        )
    return Placement("cuda", index, f"whisper.device = {requested!r}")


def check_compute_type(
    placement: Placement, requested: str | None, supported: Collection[str] | None = None
) -> None:
    """Raise ``DeviceUnavailable`` when the compute type set cannot run on the device
    (``float16`` on a CPU, say); ``supported`` defaults to what CTranslate2 says."""
    if requested is None:
        return
    if supported is None:
        import ctranslate2

        supported = ctranslate2.get_supported_compute_types(placement.kind, placement.index)
    if requested not in supported:
        raise DeviceUnavailable(
            f"whisper.compute_type = {requested!r} does not run on {placement.name} "
            f"(it takes {', '.join(sorted(supported))})"
        )


def model_device(model: object) -> str:
    """Where a model says it runs (its ``device``: ``cpu``, ``cuda:0``), or ``unknown``."""
    device = getattr(model, "device", None)
    return device if isinstance(device, str) and device else "unknown"


def probe_gpus() -> GpuProbe:
    """Ask CTranslate2 how many CUDA devices it can use, after loading the CUDA libraries
    the ``gpu`` extra installs; a GPU without cuBLAS is not usable."""
    if importlib.util.find_spec("ctranslate2") is None:
        return GpuProbe(0, "CTranslate2 is not installed (the whisper extra)")
    load_cuda_libraries()
    import ctranslate2

    try:
        devices = int(ctranslate2.get_cuda_device_count())
    except RuntimeError as error:  # a driver too old for the runtime CTranslate2 was built with
        return GpuProbe(0, f"CUDA cannot start: {error}")
    if devices == 0:
        return GpuProbe(0, "CTranslate2 sees no CUDA device (no NVIDIA GPU, or no driver)")
    try:
        ctypes.CDLL(CUBLAS)
    except OSError:
        return GpuProbe(devices, f"{CUBLAS} cannot be loaded ({GPU_HINT})")
    return GpuProbe(devices)


CUBLAS: Final = "libcublas.so.12"
"""The cuBLAS CTranslate2 4.x loads by name (since 4.7 it needs no cuDNN)."""

CUDA_PACKAGES: Final = ("nvidia.cublas",)
"""Packages of the ``gpu`` extra whose ``lib`` directory holds shared libraries to load."""

CUDA_LIBRARIES: Final = ("libcublasLt.so.12", "libcublas.so.12")
"""What is loaded from them, in this order (a library after those it needs). Not every
file there: ``libnvblas`` would take over the BLAS calls of everything loaded later."""


@functools.cache
def load_cuda_libraries() -> tuple[str, ...]:
    """Load the CUDA libraries of the ``gpu`` extra's wheels, globally, once per process.

    Returns the files loaded (none when the wheels are not installed, which is fine when
    the libraries come from the system). Later ``dlopen`` calls by name find them loaded.
    """
    loaded = load_libraries(library_directories())
    if loaded:
        log.debug("loaded the CUDA libraries %s", loaded)
    return loaded


def load_libraries(directories: list[Path]) -> tuple[str, ...]:
    """Load each of ``CUDA_LIBRARIES`` found in ``directories``, globally, in order."""
    loaded: list[str] = []
    for directory in directories:
        for name in CUDA_LIBRARIES:
            path = directory / name
            if not path.is_file():
                continue
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as error:
                log.warning("cannot load %s: %s", path, error)
                continue
            loaded.append(str(path))
    return tuple(loaded)


def library_directories(packages: tuple[str, ...] = CUDA_PACKAGES) -> list[Path]:
    """The ``lib`` directories of those of ``packages`` that are installed."""
    found: list[Path] = []
    for name in packages:
        try:
            spec = importlib.util.find_spec(f"{name}.lib")
        except ModuleNotFoundError:  # the parent package is missing
            continue
        if spec is None or spec.submodule_search_locations is None:
            continue
        found.extend(Path(p) for p in spec.submodule_search_locations if Path(p).is_dir())
    return found
