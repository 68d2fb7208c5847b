"""The exception tree and the typed error codes that clients see.

::

    StreamerError
    ├── ClientError            the peer misbehaved; becomes an ``error`` event with a code
    │   ├── InvalidJson        invalid_json
    │   ├── InvalidMessage     invalid_message (names the offending field)
    │   ├── NotStarted         not_started
    │   ├── AlreadyStarted     already_started
    │   ├── InvalidFormat      invalid_format
    │   ├── Overloaded         overloaded (close 1013)
    │   │   └── StreamLimit    overloaded, reason stream_limit (a concurrent-stream limit)
    │   ├── ShuttingDown       shutting_down (close 1001)
    │   ├── ConnectionDenied   unauthorized / forbidden (HTTP 401 / 403 before the upgrade)
    │   └── BadHandshake       invalid_message (HTTP 400 before the upgrade)
    └── InferenceError         the model failed on one request; the stream goes on
        ├── ModelFailed        model_error
        ├── ModelCrashed       model_crashed (generic message, logged)
        ├── WorkerCrashed      worker_crashed (a worker process died)
        └── InferenceTimeout   inference_timeout

Server faults that are not ``StreamerError`` reach clients only as ``internal_error`` with a
generic message and close code 1011.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Every ``code`` an ``error`` event can carry."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    NOT_STARTED = "not_started"
    ALREADY_STARTED = "already_started"
    INVALID_FORMAT = "invalid_format"
    INCOMPLETE_FRAME = "incomplete_frame"
    MESSAGE_TOO_BIG = "message_too_big"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    SLOW_CONSUMER = "slow_consumer"
    MODEL_ERROR = "model_error"
    MODEL_CRASHED = "model_crashed"
    WORKER_CRASHED = "worker_crashed"
    INFERENCE_TIMEOUT = "inference_timeout"
    INTERNAL_ERROR = "internal_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    IDLE_TIMEOUT = "idle_timeout"
    SESSION_EXPIRED = "session_expired"
    RATE_LIMITED = "rate_limited"
    FALLING_BEHIND = "falling_behind"
    BUS_UNAVAILABLE = "bus_unavailable"


STREAM_LIMIT = "stream_limit"
"""The ``reason`` of a refusal by a concurrent-stream limit (``StreamLimit``)."""


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class StreamerError(Exception):
    """Root of every error the service raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(StreamerError):
    """The peer sent something the protocol does not allow."""

    reason: str | None = None
    """A finer cause than ``code``, for front-ends whose wire tells such causes apart."""


class InvalidJson(ClientError):
    code = ErrorCode.INVALID_JSON


class InvalidMessage(ClientError):
    code = ErrorCode.INVALID_MESSAGE


class NotStarted(ClientError):
    code = ErrorCode.NOT_STARTED


class AlreadyStarted(ClientError):
    code = ErrorCode.ALREADY_STARTED


class InvalidFormat(ClientError):
    code = ErrorCode.INVALID_FORMAT


class MessageTooBig(ClientError):
    code = ErrorCode.MESSAGE_TOO_BIG


class Overloaded(ClientError):
    code = ErrorCode.OVERLOADED


class StreamLimit(Overloaded):
    """A limit on concurrent streams (the server's, or a key's or token's quota) refused a
    stream: ``overloaded``, told apart as ``stream_limit`` where a wire does (AssemblyAI's
    3009, against its 1013 for a server that is behind)."""

    reason = STREAM_LIMIT


class ShuttingDown(ClientError):
    code = ErrorCode.SHUTTING_DOWN


class ConnectionDenied(ClientError):
    """The connection policy refused the connection before any stream opened.

    ``status`` is the HTTP status of the refused upgrade: 401 (who are you?) or 403 (not
    you, or not from there).
    """

    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        if status not in (401, 403):
            raise ValueError(f"a denial is HTTP 401 or 403, not {status}")
        self.status = status
        self.code = ErrorCode.UNAUTHORIZED if status == 401 else ErrorCode.FORBIDDEN


class BadHandshake(ClientError):
    """The upgrade request is malformed (a query parameter a front-end reads, say): HTTP
    400 before the upgrade. ``parameter`` names what is at fault; ``body``, if given, is
    the JSON body in the front-end's own shape."""

    code = ErrorCode.INVALID_MESSAGE
    status = 400

    def __init__(self, message: str, parameter: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.body = body


class InferenceError(StreamerError):
    """One inference failed; only its request is affected.

    ``retryable`` says whether the same audio may succeed if sent again: a fault of the
    machinery (a worker died, the deadline passed) may not recur, a fault of the model on
    this input will.
    """

    retryable: bool = False


class ModelFailed(InferenceError):
    code = ErrorCode.MODEL_ERROR
    retryable = False  # the model refused this input; it will again


class ModelCrashed(InferenceError):
    code = ErrorCode.MODEL_CRASHED
    # An unexpected exception of the model's own code on this input: a bug that the same
    # input is likely to hit again, so a retry is not known to help.
    retryable = False


class WorkerCrashed(InferenceError):
    code = ErrorCode.WORKER_CRASHED
    retryable = True  # the process died (perhaps on another input); a new one took its place


class InferenceTimeout(InferenceError):
    code = ErrorCode.INFERENCE_TIMEOUT
    retryable = True  # the server was slow or a call hung; capacity is restored


@dataclass(frozen=True, slots=True)
class Ending:
    """How a connection that ends for one reason is closed, on each transport."""

    close_code: CloseCode
    """The WebSocket close code."""
    grpc_status: str
    """The name of the ``grpc.StatusCode`` that ends a gRPC call."""


ENDINGS: dict[ErrorCode | None, Ending] = {
    None: Ending(CloseCode.NORMAL, "OK"),
    ErrorCode.INVALID_JSON: Ending(CloseCode.POLICY_VIOLATION, "INVALID_ARGUMENT"),
    ErrorCode.INVALID_MESSAGE: Ending(CloseCode.POLICY_VIOLATION, "INVALID_ARGUMENT"),
    ErrorCode.INVALID_FORMAT: Ending(CloseCode.POLICY_VIOLATION, "INVALID_ARGUMENT"),
    ErrorCode.NOT_STARTED: Ending(CloseCode.POLICY_VIOLATION, "FAILED_PRECONDITION"),
    ErrorCode.ALREADY_STARTED: Ending(CloseCode.POLICY_VIOLATION, "FAILED_PRECONDITION"),
    ErrorCode.MESSAGE_TOO_BIG: Ending(CloseCode.MESSAGE_TOO_BIG, "RESOURCE_EXHAUSTED"),
    ErrorCode.OVERLOADED: Ending(CloseCode.TRY_AGAIN_LATER, "RESOURCE_EXHAUSTED"),
    ErrorCode.SLOW_CONSUMER: Ending(CloseCode.POLICY_VIOLATION, "RESOURCE_EXHAUSTED"),
    ErrorCode.SHUTTING_DOWN: Ending(CloseCode.GOING_AWAY, "UNAVAILABLE"),
    ErrorCode.INTERNAL_ERROR: Ending(CloseCode.INTERNAL_ERROR, "INTERNAL"),
    ErrorCode.UNAUTHORIZED: Ending(CloseCode.POLICY_VIOLATION, "UNAUTHENTICATED"),
    ErrorCode.FORBIDDEN: Ending(CloseCode.POLICY_VIOLATION, "PERMISSION_DENIED"),
    ErrorCode.IDLE_TIMEOUT: Ending(CloseCode.NORMAL, "DEADLINE_EXCEEDED"),
    ErrorCode.SESSION_EXPIRED: Ending(CloseCode.NORMAL, "DEADLINE_EXCEEDED"),
    ErrorCode.RATE_LIMITED: Ending(CloseCode.POLICY_VIOLATION, "RESOURCE_EXHAUSTED"),
    ErrorCode.BUS_UNAVAILABLE: Ending(CloseCode.INTERNAL_ERROR, "UNAVAILABLE"),
}
"""The one table from the reason a connection ends (None: it ended normally) to its
WebSocket close code and gRPC status. A WebSocket survives most client errors (they are
``error`` events); a gRPC call, which is one stream, ends with the status."""
