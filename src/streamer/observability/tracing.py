"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` environment variables.

Spans are exported only when asked for: ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or
an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
with no exporter named. Unset, spans still get real ids (for the ``ready`` event and the
logs) but go nowhere. ``OTEL_SDK_DISABLED=true`` turns the SDK off: no span is created,
and a stream carries its client's trace id, if any. The exporter itself reads the other
variables (headers, TLS, timeout), the batch processor ``OTEL_BSP_*``, the sampler
``OTEL_TRACES_SAMPLER``, and the resource ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``.

The tracer is held by ``Tracing`` and passed to whoever needs it; the global tracer
provider is never set, so tests can run several servers' tracing side by side.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "TRACE_ID_IGNORED",
    "ConnectionTrace",
    "Tracing",
    "exporters_from_env",
    "extract_parent",
    "format_traceparent",
    "parse_traceparent",
]

log = logging.getLogger(__name__)

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
SCOPE: Final = "streamer"

TRACEPARENT_LENGTH: Final = 55
_TRACEPARENT_FORM = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}", re.ASCII
)
TRACE_ID_IGNORED: Final = (
    "trace_id ignored: not a valid W3C traceparent (55 characters: version-trace id-parent "
    "id-flags in lowercase hex); the stream starts a new trace"
)
"""The ``ready`` warning of a stream whose client named a trace the server did not take."""

_propagator = TraceContextTextMapPropagator()
_getter: DefaultGetter = DefaultGetter()


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the environment asks for; none when it asks for nothing."""
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    exporters: list[SpanExporter] = []
    for name in dict.fromkeys(names):
        if name == "none":
            return []
        if name == "otlp":
            exporters.append(_otlp_exporter(env))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER names %r, which is not supported; ignored", name)
    return exporters


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    """OTLP over gRPC (the default) or over HTTP with protobuf, as the protocol variables say;
    the exporter reads its endpoint, headers, timeout and compression from ``OTEL_*`` too."""
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ) or "grpc"
    protocol = protocol.strip().lower()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    if protocol != "grpc":
        log.warning("OTLP protocol %r is not supported; exporting over gRPC", protocol)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def format_traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` of a span: ``00-<trace id>-<span id>-<flags>``."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid W3C ``traceparent``, else ``None``.

    Valid: exactly 55 characters (surrounding whitespace aside), a version other than
    ``ff``, a trace id and a parent id that are not all zeros, and flags, each lowercase hex.
    Whatever else a client sends is never parsed further, stored or echoed.
    """
    if value is None or len(value) > 2 * TRACEPARENT_LENGTH:
        return None
    value = value.strip()
    if len(value) != TRACEPARENT_LENGTH or not _TRACEPARENT_FORM.fullmatch(value):
        return None
    return value


def extract_parent(
    traceparent: str | None, headers: Mapping[str, str] | None = None
) -> Context | None:
    """The remote parent a client named: its ``traceparent`` string, else its headers.

    Returns ``None`` when neither holds a valid W3C ``traceparent``.
    """
    carriers: list[dict[str, str]] = []
    if (valid := parse_traceparent(traceparent)) is not None:
        carriers.append({TRACEPARENT: valid})
    if headers is not None and (value := parse_traceparent(headers.get(TRACEPARENT))):
        carrier = {TRACEPARENT: value}
        if state := headers.get(TRACESTATE):
            carrier[TRACESTATE] = state
        carriers.append(carrier)
    for carrier in carriers:
        context = _propagator.extract(carrier, getter=_getter)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    return None


@dataclass(frozen=True, slots=True)
class ConnectionTrace:
    """The span of one connection, and the parent its client named in the handshake."""

    span: Span
    client_parent: Context | None
    ignored_traceparent: bool = False
    """The handshake carried a ``traceparent`` that was not valid (and was ignored)."""

    @property
    def context(self) -> Context:
        """The context whose current span is the connection's."""
        return trace.set_span_in_context(self.span)

    def end(self, close_code: int | None = None) -> None:
        if close_code is not None:
            self.span.set_attribute("streamer.close_code", close_code)
        self.span.end()


class Tracing:
    """The tracer of one server process, and the provider behind it (to flush on exit)."""

    def __init__(
        self, tracer: Tracer | None = None, provider: TracerProvider | None = None
    ) -> None:
        self.provider = provider
        self.tracer: Tracer = tracer or (
            provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        exporters: Sequence[SpanExporter] | None = None,
    ) -> Tracing:
        """Tracing as the ``OTEL_*`` variables describe it (``exporters`` overrides theirs)."""
        env = os.environ if environ is None else environ
        if _flag(env, "OTEL_SDK_DISABLED"):
            return cls()
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or SCOPE})
        chosen = exporters_from_env(env) if exporters is None else list(exporters)
        # With nowhere to send spans, none is recorded (a recorded span costs every stream
        # CPU for nothing); spans still get ids, for the ``ready`` event and the logs.
        sampler = None if chosen else ALWAYS_OFF
        provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        for exporter in chosen:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if chosen:
            log.info("exporting spans with %s", ", ".join(type(e).__name__ for e in chosen))
        return cls(provider=provider)

    @property
    def enabled(self) -> bool:
        """Whether spans are created at all (they may still not be exported)."""
        return self.provider is not None

    def connection(self, route: str, headers: Mapping[str, str] | None = None) -> ConnectionTrace:
        """Start the span of one connection; its parent is the handshake's ``traceparent``."""
        parent = extract_parent(None, headers)
        ignored = headers is not None and bool(headers.get(TRACEPARENT)) and parent is None
        span = self.tracer.start_span(
            "streamer.connection",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"streamer.route": route},
        )
        return ConnectionTrace(span, parent, ignored)

    def stream_parent(
        self, traceparent: str | None, connection: ConnectionTrace | None
    ) -> tuple[Context | None, list[Link]]:
        """Where a stream's span hangs: the client's span when it named one, else the
        connection's; a stream under a client's span is linked to its connection."""
        parent = extract_parent(traceparent)
        if parent is None and connection is not None:
            parent = connection.client_parent
        if parent is None:
            return (connection.context if connection is not None else None), []
        links: list[Link] = []
        if connection is not None and connection.span.get_span_context().is_valid:
            links.append(Link(connection.span.get_span_context()))
        return parent, links

    def force_flush(self, timeout_millis: int = 5000) -> bool:
        return self.provider.force_flush(timeout_millis) if self.provider is not None else True

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters."""
        if self.provider is not None:
            self.provider.shutdown()
