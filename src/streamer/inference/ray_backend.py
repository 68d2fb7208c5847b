"""The model tier on Ray Serve (``inference.backend = "ray"``; the ``ray`` extra).

The model runs as a Ray Serve deployment (``StreamerModel``): each replica builds the model
from a picklable factory (as each worker process of ``process_pool`` does) and serves single
inputs through ``@serve.batch``, so that inputs from
every front-end process, on every machine, share its batches. The front-end keeps its
scheduler (per-stream order, deadlines, interim replacement) and swaps its worker pool for
``RayPool``, which sends each input of a batch as one request through a deployment handle:

- a model failure comes back as a value and becomes ``model_error``; a replica that dies
  (or cannot be reached) gives ``worker_crashed`` for its requests, and Serve starts
  another; the scheduler's deadline gives ``inference_timeout`` as for local pools;
- a stream that ends has its queued inferences withdrawn by the scheduler before any is
  sent (only ``inference.workers`` batches per process are ever in Ray at once); a batch
  given up at its deadline has its Ray requests cancelled, queued or running;
- the model's metadata (name, sample rate, batch size, device) is asked of the deployment: the
  front-end loads no model.

``ray.address`` names a running cluster (``ray://head:10001`` or ``auto``); without one a
local cluster is started in the process (for one front-end process; with ``--workers``
give an address). The application for ``serve run`` / a KubeRay RayService, built from the
environment's settings, is ``streamer.ray_serve:app``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

import numpy as np
from numpy.typing import NDArray

from streamer.errors import WorkerCrashed
from streamer.inference.device import model_device
from streamer.inference.model import (
    ModelElsewhere,
    ModelFailure,
    ModelPanic,
    Output,
    UnsupportedModel,
    make_model,
)
from streamer.inference.pool import call_model
from streamer.inference.process_pool import ModelFactory

try:
    import ray
    from ray import serve
    from ray.exceptions import RayError, RayTaskError
except ImportError as missing:  # pragma: no cover - the extra is missing
    raise UnsupportedModel(
        "inference.backend = 'ray' needs the ray extra: pip install 'streamer[ray]'"
    ) from missing

log = logging.getLogger(__name__)

APP_NAME: Final = "streamer-model"
DEPLOYMENT: Final = "StreamerModel"
_FAILED: Final = "__streamer_model_failure__"


@dataclass(slots=True)
class RemoteModel(ModelElsewhere):
    """A model's metadata, for a front-end whose model runs on Ray Serve. It cannot infer."""

    runs: ClassVar[str] = "on Ray Serve"


@serve.deployment(name=DEPLOYMENT)
class StreamerModel:
    """One replica: the model ``factory`` makes, behind ``@serve.batch``."""

    def __init__(
        self,
        factory: ModelFactory,
        name: str,
        *,
        max_batch_size: int | None = None,
        batch_wait_seconds: float = 0.005,
        panic_kills_process: bool = False,
    ) -> None:
        self.model = make_model(factory, name)
        self.panic_kills_process = panic_kills_process
        batched = cast(Any, self.infer)
        # Unset, the model's own size: Whisper's grows on a GPU.
        limit = max_batch_size or self.model.max_batch_size
        batched.set_max_batch_size(max(1, min(limit, self.model.max_batch_size)))
        batched.set_batch_wait_timeout_s(batch_wait_seconds)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "sample_rate": self.model.sample_rate,
            "max_batch_size": self.model.max_batch_size,
            "device": model_device(self.model),
        }

    def _run(self, batch: list[tuple[NDArray[np.float32], bool]]) -> list[Any]:
        audio = [item for item, _ in batch]
        words = [wants for _, wants in batch]
        results: list[Any] = []
        for item in call_model(self.model, audio, words if any(words) else None):
            if isinstance(item, ModelPanic) and self.panic_kills_process:
                log.error("the model crashed its replica")
                os._exit(70)  # as a native crash would: the replica is gone
            if isinstance(item, ModelFailure):
                results.append({_FAILED: str(item) or "the model failed on this input"})
            elif isinstance(item, Exception):
                raise item  # a crash of the model's code: the caller sees it
            else:
                results.append(item)
        return [(len(batch), result) for result in results]  # with the batch's size

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer(self, batch: list[tuple[NDArray[np.float32], bool]]) -> list[Any]:
        """Each request is one input and whether it wants word times."""
        # Off the replica's loop, so that requests keep arriving while the model runs.
        return await asyncio.to_thread(self._run, batch)


def application(
    config: Any,
    factory: ModelFactory,
    name: str,
    *,
    panic_kills_process: bool = False,
    **options: Any,
) -> Any:
    """The deployment bound to its model: ``config`` is the ``[ray]`` settings, ``factory``
    the picklable recipe each replica builds its model from (``name`` says which);
    ``options`` are the deployment's own (replicas, CPUs), if any."""
    return (
        cast(Any, StreamerModel)
        .options(**options)
        .bind(
            factory,
            name,
            max_batch_size=config.max_batch_size,
            batch_wait_seconds=config.batch_wait_ms / 1000,
            panic_kills_process=panic_kills_process,
        )
    )


def _connect(config: Any) -> None:
    if ray.is_initialized():
        return
    if config.address:
        ray.init(address=config.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=config.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )


def deploy(
    config: Any,
    recipe: Callable[[], ModelFactory],
    name: str,
    *,
    panic_kills_process: bool = False,
) -> Any:
    """Connect to (or start) Ray, run the deployment of the model ``recipe()`` makes (unless
    ``ray.deploy`` is off: then the one already running, and the recipe is not asked), and
    return its handle. ``config`` is the ``[ray]`` settings."""
    _connect(config)
    if not config.deploy:
        return serve.get_app_handle(APP_NAME)
    options = deployment_options(config)
    bound = application(config, recipe(), name, panic_kills_process=panic_kills_process, **options)
    return serve.run(bound, name=APP_NAME, route_prefix=None)


def deployment_options(config: Any) -> dict[str, Any]:
    """The deployment's options from ``[ray]``: each replica's CPUs and GPUs, how many."""
    actor: dict[str, Any] = {"num_cpus": config.replica_cpus}
    if config.replica_gpus:
        # Ray shows a replica only the GPUs it reserved (CUDA_VISIBLE_DEVICES): one without
        # any runs whisper.device = 'auto' on the CPU.
        actor["num_gpus"] = config.replica_gpus
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": config.max_ongoing_requests,
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling
    else:
        options["num_replicas"] = config.replicas
    return options


def cluster_address(config: Any) -> str:
    """The address other processes join the cluster this one is connected to by: the
    configured one, or the local cluster's."""
    return str(config.address or ray.get_runtime_context().gcs_address)


def remote_model(handle: Any) -> RemoteModel:
    # Asked from a thread of its own: a handle does not block inside a running event loop
    # (the server builds its parts at start-up, before it serves).
    with concurrent.futures.ThreadPoolExecutor(1) as ask:
        meta = ask.submit(lambda: handle.metadata.remote().result()).result()
    return RemoteModel(
        meta["name"],
        int(meta["sample_rate"]),
        int(meta["max_batch_size"]),
        str(meta.get("device") or "unknown"),  # an older deployment does not say
    )


class RayPool:
    """The worker pool seam on Ray Serve: each input one request through the handle."""

    preemptible = True

    def __init__(
        self, handle: Any, workers: int, *, batch_size: Callable[[int], None] | None = None
    ) -> None:
        self.handle = handle
        self.workers = workers
        self._batch_size = batch_size
        """Told, for each answered input, the size of the replica's batch it ran in."""
        self.in_flight: set[Any] = set()
        """Requests sent and not yet answered (tests look: nothing stays behind)."""

    @property
    def available_workers(self) -> int:
        return self.workers

    @property
    def stuck_workers(self) -> int:
        return 0

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        wants = list(words) if words is not None else [False] * len(batch)
        responses = [
            self.handle.infer.remote((np.asarray(item), want))
            for item, want in zip(batch, wants, strict=True)
        ]
        self.in_flight.update(responses)
        try:
            answers = await asyncio.gather(*responses, return_exceptions=True)
        except asyncio.CancelledError:
            for response in responses:
                response.cancel()
            raise
        finally:
            self.in_flight.difference_update(responses)
        results = []
        for answer in answers:
            # (batch size, output); a failure, or the output alone from an application
            # deployed before it told its batch sizes (``ray.deploy = false``), as it is.
            if isinstance(answer, tuple):
                size, answer = answer
                if self._batch_size is not None:
                    self._batch_size(int(size))
            results.append(_result(answer))
        return results

    async def close(self) -> None:
        return None


def _result(answer: Any) -> Output | Exception:
    if isinstance(answer, dict) and _FAILED in answer:
        return ModelFailure(str(answer[_FAILED]))
    if isinstance(answer, RayTaskError):
        # The model's own code raised inside the replica: a crash of the model (model_crashed).
        return RuntimeError(f"the model raised in its replica: {answer.cause!r}")
    if isinstance(answer, RayError):
        # The replica died or could not be reached: the request is lost with it.
        return WorkerCrashed(f"the model replica failed: {type(answer).__name__}")
    if isinstance(answer, BaseException):
        return answer if isinstance(answer, Exception) else RuntimeError(str(answer))
    return dict(answer)
