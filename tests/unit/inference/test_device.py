"""Where Whisper runs: ``whisper.device`` resolved against what a machine offers, and the
compute type and batch size that follow from the device."""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.config import Settings
from streamer.inference.device import (
    CUDA_LIBRARIES,
    DEVICE_DEFAULTS,
    DeviceUnavailable,
    GpuProbe,
    Placement,
    check_compute_type,
    library_directories,
    load_libraries,
    model_device,
    place,
    probe_gpus,
    settle,
)
from streamer.inference.model import TestModel, UnsupportedModel

needs_ctranslate2 = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None, reason="needs the whisper extra"
)
NO_GPU = GpuProbe(0, "CTranslate2 sees no CUDA device")
TWO_GPUS = GpuProbe(2)
GPU_WITHOUT_CUBLAS = GpuProbe(1, "libcublas.so.12 cannot be loaded")


def probing(found: GpuProbe) -> tuple[list[int], object]:
    """A probe answering ``found``, and the list of its calls."""
    calls: list[int] = []

    def probe() -> GpuProbe:
        calls.append(1)
        return found

    return calls, probe


def test_cpu_is_the_cpu_without_asking_for_gpus() -> None:
    calls, probe = probing(TWO_GPUS)
    assert place("cpu", probe) == Placement("cpu", 0, "whisper.device = 'cpu'")  # type: ignore[arg-type]
    assert calls == []


def test_auto_takes_the_first_usable_gpu() -> None:
    chosen = place("auto", lambda: TWO_GPUS)
    assert (chosen.kind, chosen.name) == ("cuda", "cuda:0")
    assert "2 usable CUDA device(s)" in chosen.reason


@pytest.mark.parametrize("found", [NO_GPU, GPU_WITHOUT_CUBLAS])
def test_auto_without_a_usable_gpu_is_the_cpu_and_says_why(found: GpuProbe) -> None:
    chosen = place("auto", lambda: found)
    assert chosen.name == "cpu"
    assert chosen.reason == f"auto: no usable GPU: {found.why_not}"


@pytest.mark.parametrize(("requested", "name"), [("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_cuda_names_a_device(requested: str, name: str) -> None:
    assert place(requested, lambda: TWO_GPUS).name == name


@pytest.mark.parametrize(
    ("requested", "found", "says"),
    [
        ("cuda", NO_GPU, "whisper.device = 'cuda', but CTranslate2 sees no CUDA device"),
        ("cuda:0", GPU_WITHOUT_CUBLAS, "but libcublas.so.12 cannot be loaded"),
        ("cuda:2", TWO_GPUS, "this machine has 2 CUDA device(s) (cuda:0 to cuda:1)"),
        ("cuda", GpuProbe(0), "but no CUDA device was found"),
    ],
)
def test_cuda_without_that_gpu_is_refused_with_the_reason(
    requested: str, found: GpuProbe, says: str
) -> None:
    with pytest.raises(DeviceUnavailable) as refused:
        place(requested, lambda: found)
    assert says in str(refused.value)
    # The server's start-up check catches the model's own errors: this is one.
    assert isinstance(refused.value, UnsupportedModel)


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:-1", "CPU", "cuda0", ""])
def test_a_value_that_is_no_device_is_refused_by_the_settings(value: str) -> None:
    with pytest.raises(ValidationError, match=r"whisper\.device"):
        Settings(whisper={"device": value})
    with pytest.raises(ValueError, match="not a device"):
        place(value, lambda: TWO_GPUS)


def test_compute_type_and_batch_size_default_per_device() -> None:
    on_cpu, on_gpu = Placement("cpu"), Placement("cuda", 1)
    assert settle(on_cpu, None, None) == DEVICE_DEFAULTS["cpu"]
    assert settle(on_gpu, None, None) == DEVICE_DEFAULTS["cuda"]
    assert (DEVICE_DEFAULTS["cpu"].compute_type, DEVICE_DEFAULTS["cpu"].max_batch_size) == (
        "int8",
        8,
    )
    assert (DEVICE_DEFAULTS["cuda"].compute_type, DEVICE_DEFAULTS["cuda"].max_batch_size) == (
        "float16",
        32,
    )
    # What is set wins, on either device.
    assert settle(on_gpu, "int8_float16", 64).compute_type == "int8_float16"
    assert settle(on_cpu, "float32", 2).max_batch_size == 2


def test_a_compute_type_the_device_cannot_run_is_refused_before_the_model_loads() -> None:
    on_cpu = {"float32", "int8", "int8_float32", "int16"}
    check_compute_type(Placement("cpu"), None, on_cpu)  # unset: the device's own
    check_compute_type(Placement("cpu"), "int8", on_cpu)
    with pytest.raises(DeviceUnavailable) as refused:
        check_compute_type(Placement("cpu"), "float16", on_cpu)
    assert str(refused.value) == (
        "whisper.compute_type = 'float16' does not run on cpu "
        "(it takes float32, int16, int8, int8_float32)"
    )
    with pytest.raises(DeviceUnavailable, match="does not run on cuda:1"):
        check_compute_type(Placement("cuda", 1), "bfloat16", {"float16", "float32"})


@needs_ctranslate2
def test_ctranslate2_says_which_compute_types_the_cpu_runs() -> None:
    check_compute_type(Placement("cpu"), "int8")
    with pytest.raises(DeviceUnavailable):
        check_compute_type(Placement("cpu"), "float16")


def test_the_settings_describe_the_defaults_the_code_uses() -> None:
    fields = Settings.model_fields["whisper"].annotation.model_fields  # type: ignore[union-attr]
    assert "8 on the CPU, 32 on a GPU" in str(fields["max_batch_size"].description)
    assert "int8 on the CPU, float16 on a GPU" in str(fields["compute_type"].description)


def test_a_model_reports_its_device_or_unknown() -> None:
    assert model_device(TestModel()) == "cpu"
    assert model_device(object()) == "unknown"


@needs_ctranslate2
def test_the_probe_says_why_a_machine_without_a_gpu_has_none() -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device (the GPU tests cover it)")
    found = probe_gpus()
    assert not found.usable
    assert found.why_not is not None and "no CUDA device" in found.why_not
    assert place("auto").name == "cpu"


def _shared_library() -> Path:
    """Some real shared library of this system, to stand in for cuBLAS's files."""
    name = ctypes.util.find_library("z") or ctypes.util.find_library("m")
    assert name is not None
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    pytest.skip(f"cannot find the file of {name}")


def test_the_gpu_wheels_libraries_are_loaded_in_order_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package laid out as nvidia-cublas-cu12 lays out its files.
    lib = tmp_path / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    real = _shared_library()
    for name in (*CUDA_LIBRARIES, "libnvblas.so.12"):
        shutil.copy(real, lib / name)
    (lib / "__init__.py").write_text("")
    (tmp_path / "nvidia" / "cublas" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    try:
        found = library_directories(("nvidia.cublas", "nvidia.not_installed", "not_a_package"))
    finally:  # the stand-in package must not outlive the test
        for name in set(sys.modules) - before:
            del sys.modules[name]
    assert found == [lib]
    loaded = load_libraries(found)
    # cuBLASLt before cuBLAS (which needs it); never libnvblas (it takes over BLAS calls).
    assert loaded == tuple(str(lib / name) for name in CUDA_LIBRARIES)


needs_whisper = pytest.mark.skipif(
    importlib.util.find_spec("faster_whisper") is None, reason="needs the whisper extra"
)


@needs_whisper
def test_on_the_cpu_the_recognizer_decodes_int8_in_batches_of_8() -> None:
    from streamer.inference.whisper import WhisperParams, WhisperRecognizer

    whisper = WhisperRecognizer(WhisperParams(device="cpu"))
    assert (whisper.device, whisper.compute_type, whisper.max_batch_size) == ("cpu", "int8", 8)
    engine = whisper._model.model  # what CTranslate2 itself was asked for
    assert (engine.device, engine.device_index) == ("cpu", [0])
    assert engine.compute_type.startswith("int8")  # int8 weights, float32 activations


@needs_whisper
def test_a_compute_type_and_batch_size_set_are_taken_as_they_are() -> None:
    from streamer.inference.whisper import WhisperParams, WhisperRecognizer

    whisper = WhisperRecognizer(
        WhisperParams(device="cpu", compute_type="float32", max_batch_size=3)
    )
    assert (whisper.compute_type, whisper.max_batch_size) == ("float32", 3)
    assert whisper._model.model.compute_type == "float32"


@needs_whisper
def test_the_server_refuses_a_gpu_it_cannot_use_before_building_anything() -> None:
    from streamer.app import device_placement

    settings = Settings(inference={"model": "whisper"}, whisper={"device": "cpu"})
    assert device_placement(settings) == Placement("cpu", 0, "whisper.device = 'cpu'")
    # Another model, or Whisper on Ray (whose replicas choose), is not placed here.
    assert device_placement(Settings(whisper={"device": "cuda:7"})) is None
    on_ray = Settings(
        inference={"model": "whisper", "backend": "ray"}, whisper={"device": "cuda:7"}
    )
    assert device_placement(on_ray) is None


# Ray Serve's own models use a pydantic form that pydantic deprecates.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
def test_ray_replicas_reserve_the_gpus_the_settings_give_them() -> None:
    pytest.importorskip("ray", reason="needs the ray extra")
    from streamer.inference.ray_backend import deployment_options

    plain = deployment_options(Settings().ray)
    assert plain["ray_actor_options"] == {"num_cpus": 1.0}
    gpu = deployment_options(Settings(ray={"replica_gpus": 0.5, "replicas": 2}).ray)
    assert gpu["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert gpu["num_replicas"] == 2


@needs_whisper
def test_rows_of_an_encoder_output_are_those_rows() -> None:
    import ctranslate2
    import numpy as np

    from streamer.inference.whisper import rows_of

    full = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    picked = rows_of(ctranslate2.StorageView.from_array(full), [1, 3])
    assert picked.device == "cpu"
    assert np.array_equal(np.asarray(picked), full[[1, 3]])


@needs_whisper
def test_a_batch_where_some_want_word_times_gives_them_to_those_alone() -> None:
    import numpy as np

    from streamer.bench.expected import decode_channels
    from streamer.client import load_audio
    from streamer.inference.whisper import WhisperParams, WhisperRecognizer

    def speech(name: str) -> np.ndarray:
        audio = load_audio(Path(__file__).resolve().parents[2] / "fixtures" / "audio" / name)
        return decode_channels(audio.data, dict(audio.format), 16000)[0]

    whisper = WhisperRecognizer(WhisperParams(device="auto"))  # the GPU, where there is one
    clips = [speech("cross_8k.wav"), speech("front_center_48k.wav"), speech("big_dog_8k.wav")]
    outputs = whisper.infer_batch(clips, [False, True, False])
    assert all(isinstance(out, dict) for out in outputs), outputs
    plain, timed, other = (dict(out) for out in outputs if isinstance(out, dict))
    assert "words" not in plain and "words" not in other
    words = timed["words"]
    assert words and "".join(w["word"] for w in words) == "".join(timed["text"].split())
