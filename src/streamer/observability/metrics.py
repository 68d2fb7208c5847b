"""Prometheus metrics of one server process, held in a registry that is passed in.

No module-level metric objects: the composition root creates a ``CollectorRegistry`` and a
``Metrics`` on it, and tests build their own. Every name starts with ``streamer_``; the
list, with what each means, is in ``docs/operations.md``.

Hot paths call small methods with pre-bound label children (a dict look-up, no lock on
the label set); gauges of live state (streams, queue depth, busy workers, tasks) are read
at scrape time from callables the composition root supplies, so nothing has to keep them
in step (``observability/gauges.py``, which also shares them across front-end processes).
"""

from __future__ import annotations

import time
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.errors import ErrorCode
from streamer.observability.gauges import (
    ROUTES,
    SPECULATION_OUTCOMES,
    RuntimeCollector,
    RuntimeSources,
    SharedRuntime,
    SpeculationOutcome,
)

__all__ = [
    "EVENT_TYPES",
    "OUTCOMES",
    "ROUTES",
    "STAGES",
    "Metrics",
    "RuntimeSources",
    "new_registry",
]

VAD_FRAME_SECONDS: Final = 0.032
"""Audio per row of a batched VAD call: one Silero frame, 512 samples at 16 kHz."""


class BatchFigures(Protocol):
    """What ``Metrics.observe_batch`` reads of one dispatched inference batch (the
    scheduler's ``BatchStats``)."""

    @property
    def size(self) -> int: ...
    @property
    def queue_wait(self) -> tuple[float, ...]: ...
    @property
    def run_seconds(self) -> float: ...
    @property
    def audio_seconds(self) -> float: ...
    @property
    def failures(self) -> int: ...
    @property
    def crashes(self) -> int: ...
    @property
    def timeouts(self) -> int: ...


STAGES: Final = ("decode", "resample", "vad", "model")
"""The pipeline stages with media, processing and real-time-factor histograms."""
OUTCOMES: Final = ("completed", "disconnected", "error", "slow_consumer", "shutdown")
"""How a stream can end (the ``outcome`` label of ``streamer_streams_ended_total``)."""
EVENT_TYPES: Final = ("ready", "segment", "active", "inactive", "error", "done")

MEDIA_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
PROCESSING_BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
RTF_BUCKETS: Final = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip
FIRST_RESULT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS: Final = (
    1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAG_BUCKETS: Final = (
    1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


def new_registry(*, process: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process, platform and GC collectors when ``process``."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class Metrics:
    """Every metric of the service, registered on ``registry``.

    With ``shared`` (several front-end processes, prometheus-client's multiprocess mode)
    the scrape-time gauges are published by ``publish`` instead of read at scrape time.
    """

    def __init__(self, registry: CollectorRegistry, *, shared: bool = False) -> None:
        self.registry = registry
        self.sources = RuntimeSources()
        self._shared = SharedRuntime(registry) if shared else None
        self.published_at = 0.0

        # Real-time factor per stage, as the streamer-template has it.
        self.stage_media = Histogram(
            "streamer_stage_media_duration_seconds",
            "Seconds of audio handled per observation of a stage.",
            ["stage"],
            buckets=MEDIA_BUCKETS,
            registry=registry,
        )
        self.stage_processing = Histogram(
            "streamer_stage_processing_duration_seconds",
            "Seconds a stage took for one observation.",
            ["stage"],
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        self.stage_rtf = Histogram(
            "streamer_stage_real_time_factor",
            "Processing seconds per second of audio, per observation of a stage.",
            ["stage"],
            buckets=RTF_BUCKETS,
            registry=registry,
        )
        self._stages = {
            stage: (
                self.stage_media.labels(stage),
                self.stage_processing.labels(stage),
                self.stage_rtf.labels(stage),
            )
            for stage in STAGES
        }

        # Streams and connections.
        self.streams_started = Counter(
            "streamer_streams_started",
            "Streams admitted, by route.",
            ["route"],
            registry=registry,
        )
        self.streams_ended = Counter(
            "streamer_streams_ended",
            "Streams that ended, by route and outcome.",
            ["route", "outcome"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "streamer_connections_refused",
            "Connections the connection policy refused before any stream, by route and code.",
            ["route", "code"],
            registry=registry,
        )
        self.interims_dropped = Counter(
            "streamer_interim_results_dropped",
            "Interim results dropped for clients that were not reading their events, by route.",
            ["route"],
            registry=registry,
        )
        self.bus_up = Gauge(
            "streamer_bus_up",
            "1 while the call bus (twilio.bus) carries call events, 0 while it is lost "
            "(the least over the server's processes).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.bus_up.set(1)
        self.bus_losses = Counter(
            "streamer_bus_losses",
            "Times the call bus was lost (each ended its subscriptions with bus_unavailable).",
            registry=registry,
        )
        self.unread_closes = Counter(
            "streamer_unread_results_closes",
            "Connections ended with slow_consumer after their stream ended, because the "
            "client had not read the results still queued within the close grace, by route.",
            ["route"],
            registry=registry,
        )
        self.error_events = Counter(
            "streamer_error_events",
            "Error events sent to clients, by code.",
            ["code"],
            registry=registry,
        )
        self.twilio_rejected = Counter(
            "streamer_twilio_frames_rejected",
            "Twilio Media Streams frames refused (each also an error event), by reason.",
            ["reason"],
            registry=registry,
        )
        self.twilio_callbacks = Counter(
            "streamer_twilio_callbacks",
            "POSTs of a call's finals to its callback, by outcome (sent, failed, dropped, "
            "refused: a host not allowed).",
            ["outcome"],
            registry=registry,
        )
        self.model_failures = Counter(
            "streamer_model_failures",
            "Inferences the model failed on (model_error).",
            registry=registry,
        )
        self.model_crashes = Counter(
            "streamer_model_crashes",
            "Inferences lost to a crash inside the model or its worker.",
            registry=registry,
        )
        self.model_info = Gauge(
            "streamer_model_info",
            "1, labelled with the model's name and the device it runs on (cpu, cuda:0).",
            ["model", "device"],
            registry=registry,
            # The same labels in every front-end process: one series, not one per process.
            multiprocess_mode="max",
        )
        self.inference_timeouts = Counter(
            "streamer_inference_timeouts",
            "Inferences failed for running past inference.deadline_seconds.",
            registry=registry,
        )

        # The worker pool.
        self.queue_wait = Histogram(
            "streamer_queue_wait_seconds",
            "Seconds an inference job waited for a worker.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "streamer_batch_size",
            "Jobs per batch handed to a worker.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.ray_batch_size = Histogram(
            "streamer_ray_batch_size",
            "For each input answered by the Ray Serve model tier, the size of the batch it "
            "ran in on its replica.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.vad_batch_size = Histogram(
            "streamer_vad_batch_size",
            "Frames (one per stream) per batched VAD model call.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

        # Turn detection.
        self.turn_events = Counter(
            "streamer_turn_events_total",
            "Turn events sent to clients, by route and event (StartOfTurn, Update, "
            "EagerEndOfTurn, TurnResumed, EndOfTurn).",
            ["route", "event"],
            registry=registry,
        )
        self.turn_eager_resumed = Counter(
            "streamer_turn_eager_resumed_total",
            "Early ends of turn (EagerEndOfTurn) that the speaker took back (TurnResumed).",
            ["route"],
            registry=registry,
        )
        self.turn_model_seconds = Histogram(
            "streamer_turn_model_seconds",
            "Seconds of one call of the end-of-turn model (features and model).",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.turn_batch_size = Histogram(
            "streamer_turn_batch_size",
            "Pauses scored per call of the end-of-turn model.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

        # The event loop.
        self.loop_lag = Histogram(
            "streamer_event_loop_lag_seconds",
            "How late the loop monitor's timer fired: time other callbacks held the loop.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.slow_callbacks = Counter(
            "streamer_event_loop_slow_callbacks",
            "Loop monitor ticks late by more than the slow-callback threshold.",
            registry=registry,
        )

        # What users feel.
        self.final_latency = Histogram(
            "streamer_final_latency_seconds",
            "From the arrival of the audio at a final segment's end (the end of speech on "
            "the segmented route) to the segment being sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.interim_latency = Histogram(
            "streamer_interim_latency_seconds",
            "From the arrival of the audio at an interim segment's end to it being sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.finalize = Histogram(
            "streamer_finalize_seconds",
            "From a finalize request (v1 finalize, Deepgram's Finalize, OpenAI's commit) "
            "being handled to each final it forced being sent: what a voice agent waits "
            "for once its VAD has stopped.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.speculative_finals = Counter(
            "streamer_speculative_finals",
            "Finals decoded ahead, at a pause, by route and outcome: used (adopted as the "
            "segment's final, so the final needed no decode of its own), discarded "
            "(speech resumed in the pause) or deferred (the model was behind, so the final "
            "was decoded when asked for).",
            ["route", "outcome"],
            registry=registry,
        )
        self.first_result = Histogram(
            "streamer_time_to_first_result_seconds",
            "From a stream's start to its first segment or active event.",
            ["route"],
            buckets=FIRST_RESULT_BUCKETS,
            registry=registry,
        )

        # Traffic.
        self.received_bytes = Counter(
            "streamer_received_bytes",
            "Bytes of audio received, by route.",
            ["route"],
            registry=registry,
        )
        self.received_frames = Counter(
            "streamer_received_frames",
            "Binary audio messages (WebSocket frames, gRPC audio messages) received.",
            ["route"],
            registry=registry,
        )
        self.events_sent = Counter(
            "streamer_events_sent",
            "Events sent to clients, by route and type.",
            ["route", "type"],
            registry=registry,
        )

        if self._shared is None:
            registry.register(RuntimeCollector(lambda: self.sources))

        # Known label values exist from the start, so rate() and the dashboards see zeros
        # rather than gaps.
        for route in ROUTES:
            self.streams_started.labels(route)
            for outcome in OUTCOMES:
                self.streams_ended.labels(route, outcome)
            self.received_bytes.labels(route)
            self.received_frames.labels(route)
            self.final_latency.labels(route)
            self.interim_latency.labels(route)
            self.finalize.labels(route)
            for outcome in SPECULATION_OUTCOMES:
                self.speculative_finals.labels(route, outcome)
            self.first_result.labels(route)
            self.unread_closes.labels(route)
            self.interims_dropped.labels(route)
            for kind in EVENT_TYPES:
                self.events_sent.labels(route, kind)
        for code in ErrorCode:
            self.error_events.labels(code.value)
        self._events: dict[tuple[str, str], Counter] = {}
        self._received: dict[str, tuple[Counter, Counter]] = {}

    def publish(self) -> None:
        """Copy the live state into the shared gauges (``shared`` only; call on the loop's
        thread)."""
        if self._shared is not None:
            self._shared.publish(self.sources)
            self.published_at = time.monotonic()

    # -- the pipeline ---------------------------------------------------------------------

    def observe_stage(self, stage: str, media_seconds: float, processing_seconds: float) -> None:
        """One observation of a stage: how much audio, how long it took, and their ratio."""
        children = self._stages.get(stage)
        if children is None:
            children = self._stages[stage] = (
                self.stage_media.labels(stage),
                self.stage_processing.labels(stage),
                self.stage_rtf.labels(stage),
            )
        media, processing, rtf = children
        media.observe(media_seconds)
        processing.observe(processing_seconds)
        if media_seconds > 0:
            rtf.observe(processing_seconds / media_seconds)

    def observe_batch(self, stats: BatchFigures) -> None:
        """The scheduler's observer: one dispatched batch."""
        self.batch_size.observe(stats.size)
        for wait in stats.queue_wait:
            self.queue_wait.observe(wait)
        if stats.timeouts:
            # Abandoned at the deadline: its time says nothing of the model's speed.
            self.inference_timeouts.inc(stats.timeouts)
            return
        self.observe_stage("model", stats.audio_seconds, stats.run_seconds)
        if stats.failures:
            self.model_failures.inc(stats.failures)
        if stats.crashes:
            self.model_crashes.inc(stats.crashes)

    def observe_vad_batch(self, rows: int, seconds: float) -> None:
        """The VAD engine's hook (called on its thread): one batched model call."""
        self.vad_batch_size.observe(rows)
        self.observe_stage("vad", rows * VAD_FRAME_SECONDS, seconds)

    def observe_turn_call(self, rows: int, seconds: float) -> None:
        """The turn engine's hook (called on its thread): one call of the model."""
        self.turn_batch_size.observe(rows)
        self.turn_model_seconds.observe(seconds)

    def turn_event(self, route: str, event: str) -> None:
        """One turn event handed to a client."""
        self.turn_events.labels(route, event).inc()
        if event == "TurnResumed":
            self.turn_eager_resumed.labels(route).inc()

    def observe_latency(self, route: str, seconds: float, *, final: bool) -> None:
        (self.final_latency if final else self.interim_latency).labels(route).observe(seconds)

    def observe_finalize(self, route: str, seconds: float) -> None:
        self.finalize.labels(route).observe(seconds)

    def observe_speculative(self, route: str, outcome: SpeculationOutcome) -> None:
        self.speculative_finals.labels(route, outcome).inc()

    def observe_first_result(self, route: str, seconds: float) -> None:
        self.first_result.labels(route).observe(seconds)

    # -- transports -----------------------------------------------------------------------

    def connection_refused(self, route: str, code: str) -> None:
        self.connections_refused.labels(route, code).inc()

    def stream_started(self, route: str) -> None:
        self.streams_started.labels(route).inc()

    def stream_ended(self, route: str, outcome: str) -> None:
        self.streams_ended.labels(route, outcome).inc()

    def received(self, route: str, nbytes: int) -> None:
        """One binary audio message of ``nbytes``."""
        children = self._received.get(route)
        if children is None:
            children = self._received[route] = (
                self.received_bytes.labels(route),
                self.received_frames.labels(route),
            )
        children[0].inc(nbytes)
        children[1].inc()

    def interim_dropped(self, route: str) -> None:
        """One interim result dropped for a client that is behind."""
        self.interims_dropped.labels(route).inc()

    def bus_state(self, up: bool) -> None:
        """The call bus was lost (``up`` False) or is up again."""
        self.bus_up.set(int(up))
        if not up:
            self.bus_losses.inc()

    def results_unread(self, route: str) -> None:
        """One connection ended with ``slow_consumer`` on the results left at its end."""
        self.unread_closes.labels(route).inc()

    def event_sent(self, route: str, kind: str, code: str | None = None) -> None:
        """One event handed to a client; ``code`` for error events."""
        key = (route, kind)
        child = self._events.get(key)
        if child is None:
            child = self._events[key] = self.events_sent.labels(route, kind)
        child.inc()
        if code is not None:
            self.error_events.labels(code).inc()

    # -- the event loop -------------------------------------------------------------------

    def observe_loop_lag(self, seconds: float, slow: bool) -> None:
        self.loop_lag.observe(seconds)
        if slow:
            self.slow_callbacks.inc()
