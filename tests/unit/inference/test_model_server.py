"""One model process answering several front-ends (``inference.pool = "shared"``): a real
model process on a real Unix socket, with the test model."""

from __future__ import annotations

import asyncio
import functools
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import WorkerCrashed
from streamer.inference import model as models
from streamer.inference.model import TestModel, UnsupportedModel
from streamer.inference.model_server import ModelServer, ServedModel, SharedPool, connect

KILLER = 7
"""An input of this many samples kills the model process, as a native crash would."""


def audio(samples: int) -> np.ndarray:
    return np.zeros(samples, dtype=np.float32)


@pytest.fixture
async def served() -> AsyncIterator[tuple[SharedPool, ServedModel, ModelServer]]:
    params = models.TestModelParams(panic_on_samples=KILLER, panic_kills_process=True, batch_size=4)
    server = ModelServer(functools.partial(TestModel, params))
    server.start()
    pool, model = SharedPool.open(server.address, server.authkey, 2, server=server)
    yield pool, model, server
    await pool.close()


async def test_the_front_end_gets_the_models_metadata_and_its_results(
    served: tuple[SharedPool, ServedModel, ModelServer],
) -> None:
    pool, model, _ = served
    assert model == ServedModel("test", 16000, 4, "cpu")
    sizes = range(10, 40)  # none is KILLER
    results = await asyncio.gather(*(pool.run([audio(n), audio(n + 1)]) for n in sizes))
    assert results == [[{"count": n}, {"count": n + 1}] for n in sizes]
    assert pool.lost == 0


async def test_two_front_ends_share_one_model_process(
    served: tuple[SharedPool, ServedModel, ModelServer],
) -> None:
    first, _, server = served
    second, model = SharedPool.open(server.address, server.authkey, 2)
    try:
        both = await asyncio.gather(first.run([audio(3)]), second.run([audio(5)]))
        assert both == [[{"count": 3}], [{"count": 5}]]
        assert server.started == 1 and model.name == "test"
    finally:
        await second.close()
    assert server.process is not None and server.process.is_alive()  # not the owner's


async def test_an_input_that_kills_the_model_process_fails_alone_and_it_comes_back(
    served: tuple[SharedPool, ServedModel, ModelServer],
) -> None:
    pool, _, server = served
    results = await pool.run([audio(3), audio(KILLER), audio(4)])
    # Retried one by one: only the input that kills the process fails.
    assert results[0] == {"count": 3} and results[2] == {"count": 4}
    assert isinstance(results[1], WorkerCrashed)
    assert server.started >= 2  # started again, by the pool that owns it
    assert await pool.run([audio(9)]) == [{"count": 9}]
    assert pool.lost >= 2


async def test_a_batch_given_up_frees_its_place_and_the_pool_keeps_its_size() -> None:
    server = ModelServer(functools.partial(TestModel, models.TestModelParams(delay=0.5)))
    server.start()
    pool, _ = SharedPool.open(server.address, server.authkey, 1, server=server)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.run([audio(3)])
        # The only connection was given up with its batch; another takes its place.
        assert await pool.run([audio(4)]) == [{"count": 4}]
        assert pool.available_workers == 1
    finally:
        await pool.close()
    assert server.process is not None and not server.process.is_alive()


async def test_closing_fails_later_runs_and_stops_an_owned_model_process(
    served: tuple[SharedPool, ServedModel, ModelServer],
) -> None:
    pool, _, server = served
    await pool.close()
    (result,) = await pool.run([audio(3)])
    assert isinstance(result, WorkerCrashed) and str(result) == "the worker pool is closed"
    assert server.process is not None and not server.process.is_alive()


def test_a_model_process_that_never_answers_is_reported_clearly(tmp_path: object) -> None:
    with pytest.raises(UnsupportedModel, match="did not answer within 0 s"):
        connect("/nonexistent/model.sock", b"key", 0.2)


def test_the_model_process_ends_with_its_owner(tmp_path: Path) -> None:
    # An owner (a server process) that starts the model process, then is killed.
    script = tmp_path / "owner.py"
    script.write_text(
        "import functools, sys, time\n"
        "from streamer.inference.model import TestModel\n"
        "from streamer.inference.model_server import ModelServer\n"
        "if __name__ == '__main__':\n"
        "    server = ModelServer(functools.partial(TestModel))\n"
        "    server.start()\n"
        "    print(server.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE) as owner:
        assert owner.stdout is not None
        model_pid = int(owner.stdout.readline())
        ended = os.pidfd_open(model_pid)  # readable once that process has ended
        owner.kill()
    try:
        readable, _, _ = select.select([ended], [], [], 60)
        assert readable == [ended], "the model process outlived its owner"
    finally:
        os.close(ended)
