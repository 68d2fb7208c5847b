"""POSTs of a call's finals to its callback URL, off the call's path.

Only URLs whose host is allowed by ``[twilio] callback_hosts`` are posted to, so a caller
cannot make the server post anywhere. A bounded queue and one sender task: a callback that
is slow or fails is logged and counted (``streamer_twilio_callbacks_total``), never waited
for by the call. Needs httpx (``pip install 'streamer[twilio]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def host_allowed(url: str, hosts: Iterable[str]) -> bool:
    """Whether ``url`` is http(s) to one of ``hosts`` (``host`` any port, ``host:port``
    that port only)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    for allowed in hosts:
        name, sep, want = allowed.lower().rpartition(":")
        if not sep or not want.isdigit():
            name, want = allowed.lower(), ""
        if name == host and (not want or want == str(port)):
            return True
    return False


class CallbackPoster:
    """Sends queued POSTs one after another with a timeout; ``on_outcome`` counts each
    (``sent``, ``failed``, ``dropped``)."""

    def __init__(
        self,
        hosts: Iterable[str],
        *,
        timeout: float = 5.0,
        queue: int = 1000,
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        try:
            import httpx
        except ImportError:  # pragma: no cover (installed with the dev extra)
            raise RuntimeError(
                "[twilio] callback_hosts needs httpx: pip install 'streamer[twilio]'"
            ) from None
        self._httpx = httpx
        self.hosts = tuple(hosts)
        self.timeout = timeout
        self.on_outcome = on_outcome
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(queue)
        self._task: asyncio.Task[None] | None = None

    def allowed(self, url: str) -> bool:
        return host_allowed(url, self.hosts)

    def post(self, url: str, text: str) -> None:
        """Queue one POST; dropped (logged, counted) when the queue is full."""
        try:
            self._queue.put_nowait((url, text))
        except asyncio.QueueFull:
            self.on_outcome("dropped")
            log.warning("twilio callback queue full: a final for %s was dropped", url)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="twilio-callbacks")

    async def _run(self) -> None:
        async with self._httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                url, text = await self._queue.get()
                try:
                    response = await client.post(
                        url, content=text, headers={"content-type": "application/json"}
                    )
                    response.raise_for_status()
                except self._httpx.HTTPError as error:
                    self.on_outcome("failed")
                    log.warning("twilio callback to %s failed: %s", url, error)
                else:
                    self.on_outcome("sent")
                finally:
                    self._queue.task_done()

    async def close(self, grace: float = 1.0) -> None:
        """Send what is queued within ``grace`` seconds, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
