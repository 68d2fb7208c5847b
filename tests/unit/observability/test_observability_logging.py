"""Structured logs: ids from the context on every line, JSON lines, no credentials."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamer.observability.logging import (
    bind_stream,
    configure_logging,
    current_ids,
    redact,
    unbind_stream,
)


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure_logging("debug", json_lines=True, stream=buffer)
    try:
        yield buffer
    finally:
        unbind_stream()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_carry_the_bound_ids_and_extras(output: io.StringIO) -> None:
    log = logging.getLogger("streamer.test")
    log.info("before")
    bind_stream("abc", "0af7651916cd43dd8448eb211c80319c")
    log.warning("during %d", 1, extra={"route": "simple"})
    unbind_stream()
    log.info("after")
    before, during, after = lines(output)
    assert "stream_id" not in before and "trace_id" not in before
    assert during["message"] == "during 1"
    assert during["level"] == "warning" and during["logger"] == "streamer.test"
    assert during["stream_id"] == "abc"
    assert during["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert during["route"] == "simple"
    assert "stream_id" not in after


def test_exceptions_are_one_json_line(output: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("streamer.test").exception("failed")
    (entry,) = lines(output)
    assert "ValueError: boom" in str(entry["exception"])


async def test_tasks_started_after_binding_keep_the_ids() -> None:
    async def child() -> tuple[str | None, str | None]:
        await asyncio.sleep(0)
        return current_ids()

    async def stream() -> tuple[str | None, str | None]:
        bind_stream("s1", "t1")
        task = asyncio.create_task(child())
        unbind_stream()  # the task copied the context when it was created
        return await task

    assert await asyncio.create_task(stream()) == ("s1", "t1")
    assert current_ids() == (None, None)  # another task's binding never leaks here


def test_credentials_in_urls_and_headers_are_masked(output: io.StringIO) -> None:
    log = logging.getLogger("uvicorn.error")
    log.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/api/v1/simple?token=s3cr3t&x=1")
    log.info("Authorization: Bearer abcdefghijklmnop")
    text = output.getvalue()
    assert "s3cr3t" not in text and "abcdefghijklmnop" not in text
    assert "token=[redacted]&x=1" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/a?api_key=k1&b=2", "/a?api_key=[redacted]&b=2"),
        ("password=hunter2 rest", "password=[redacted] rest"),
        ("access_token=a.b.c", "access_token=[redacted]"),
        ("nothing to hide", "nothing to hide"),
        ("route=simple&count=3", "route=simple&count=3"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_text_lines_show_the_ids() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("info", stream=buffer)
    try:
        bind_stream("abc", "t1")
        logging.getLogger("streamer.test").info("hello")
    finally:
        unbind_stream()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert buffer.getvalue().rstrip().endswith("hello stream=abc trace=t1")
