"""The demo page in a real browser: Debian's chromium, headless, driven by Playwright, with a
fake microphone playing a real recording, against a real server with Whisper.

The page gets its token the way a web app's page would: the test, as the app's backend,
mints it through ``POST /api/v1/auth/grant`` with an API key and puts it in the page's URL.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import soxr
from conftest import ServerProcess, start_server
from PIL import Image
from playwright.async_api import async_playwright
from transcripts import SAID, word_error_rate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
KEY = "k-browser-7c1e9a2f"
SECRET = "browser-test-secret-0123456789abcdef"

if shutil.which(CHROMIUM) is None:  # installed by scripts/system-deps.sh (make test)
    pytest.fail(f"{CHROMIUM} is missing: run `sh scripts/system-deps.sh`", pytrace=False)


def fake_microphone(directory: Path, name: str = "jfk.wav") -> Path:
    """The recording as chromium's fake capture device reads it: a 16-bit PCM WAV (48 kHz,
    mono), with a second of silence before the speech and three after, so that the VAD
    sees the speech start and end."""
    audio, rate = soundfile.read(AUDIO / name, dtype="float32")
    audio = soxr.resample(audio, rate, 48000)
    silence = np.zeros(48000, dtype=np.float32)
    padded = np.concatenate([silence, audio, silence, silence, silence])
    path = directory / "microphone.wav"
    soundfile.write(path, padded, 48000, subtype="PCM_16")
    return path


def browser_flags(wav: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        # %noloop: the recording plays once, then the device gives silence.
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "STREAMER_INFERENCE__MODEL": "whisper",
        "STREAMER_AUTH__API_KEYS": json.dumps([{"key": KEY, "name": "web-app"}]),
        "STREAMER_AUTH__TOKEN_SECRET": SECRET,
        "STREAMER_LOG_LEVEL": "info",
    }
    server = start_server(tmp_path_factory.mktemp("browser"), env=env)
    yield server
    server.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM, args=browser_flags(fake_microphone(tmp_path))
        )
        yield launched
        await launched.close()


def grant(server: ServerProcess, **body: object) -> dict[str, Any]:
    response = httpx.post(
        f"{server.http}/api/v1/auth/grant",
        headers={"Authorization": f"Token {KEY}"},
        json=body,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def not_blank(png: Path) -> tuple[int, float]:
    """The screenshot's distinct colours and the share of pixels that are not background."""
    image = np.asarray(Image.open(png).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    background = image[0, 0]
    share = float(np.mean(np.any(image != background, axis=2)))
    return colours, share


async def test_the_page_transcribes_the_microphone_with_a_granted_token(
    whisper_server: ServerProcess, browser: Any, tmp_path: Path
) -> None:
    granted = grant(whisper_server, routes=["segmented"], single_use=True, ttl_seconds=60)
    token = granted["token"]
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    page = await context.new_page()
    handshakes: list[dict[str, Any]] = []
    cdp = await context.new_cdp_session(page)
    cdp.on("Network.webSocketWillSendHandshakeRequest", lambda event: handshakes.append(event))
    await cdp.send("Network.enable")
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    await page.goto(f"{whisper_server.http}/?autostart=1&route=segmented&token={token}")
    # The token left the address bar once the page read it.
    assert "token" not in page.url

    # Speech starts and ends, and final results reach the end of the recording's speech
    # (at about 11 s of the fake microphone's 15), with no interim result left open.
    await page.wait_for_function(
        """() => {
            const activity = document.getElementById('activity').dataset;
            const finals = [...document.querySelectorAll('.segment.final')];
            return activity.started >= 1 && activity.ended === activity.started
                && finals.some(f => Number(f.dataset.end) >= 10.5)
                && document.querySelectorAll('.segment.interim').length === 0;
        }""",
        timeout=60_000,
    )
    await page.click("#stop")
    await page.wait_for_function(
        "() => document.getElementById('state').dataset.state === 'closed'", timeout=30_000
    )
    finals = await page.eval_on_selector_all(
        ".segment.final", "items => items.map(i => i.querySelector('.text').textContent)"
    )
    times = await page.eval_on_selector_all(
        ".segment.final", "items => items.map(i => i.querySelector('.times').textContent)"
    )
    errors = await page.eval_on_selector_all("#errors li", "items => items.map(i => i.innerText)")
    assert not errors, (errors, console)
    text = " ".join(finals)
    assert word_error_rate(SAID["jfk.wav"], text) <= 0.2, text
    assert all("final after" in t and "s" in t for t in times), times
    state = await page.text_content("#state")
    assert state is not None and "closed" in state
    rate = await page.text_content("#rate")
    assert rate is not None and rate.split()[1] == "Hz," and int(rate.split()[0]) >= 8000

    # The page's WebSocket carried the granted token, as the subprotocol pair.
    assert len(handshakes) == 1, handshakes
    request = handshakes[0]["request"]
    offered = {k.lower(): v for k, v in request["headers"].items()}["sec-websocket-protocol"]
    assert [p.strip() for p in offered.split(",")] == ["token", token]
    assert "token=" not in handshakes[0].get("request", {}).get("url", "")
    # ... and it was single-use: the server took it, so it is spent now.
    refused = await page.evaluate(
        """token => new Promise(done => {
            const ws = new WebSocket(`ws://${location.host}/api/v1/segmented`, ['token', token]);
            ws.onopen = () => done('opened');
            ws.onclose = e => done(`closed ${e.code}`);
        })""",
        token,
    )
    assert refused == "closed 1006"

    shot = tmp_path / "demo-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    colours, share = not_blank(shot)
    assert colours > 20 and share > 0.02, (colours, share)
    await context.close()
    assert token not in whisper_server.output() and KEY not in whisper_server.output()


async def test_the_page_streams_a_chosen_file_in_real_time(
    whisper_server: ServerProcess, browser: Any
) -> None:
    token = grant(whisper_server, routes=["segmented"])["token"]
    page = await browser.new_page()
    await page.goto(f"{whisper_server.http}/?route=segmented&token={token}")
    await page.set_input_files("#file", str(AUDIO / "jfk.wav"))
    started = await page.evaluate("() => performance.now()")
    await page.click("#play")
    # The page stops by itself when the file has played, and the server says done.
    await page.wait_for_function(
        "() => document.getElementById('state').dataset.state === 'closed'", timeout=60_000
    )
    elapsed = (await page.evaluate("() => performance.now()")) - started
    finals = await page.eval_on_selector_all(
        ".segment.final", "items => items.map(i => i.querySelector('.text').textContent)"
    )
    errors = await page.eval_on_selector_all("#errors li", "items => items.map(i => i.innerText)")
    assert not errors
    assert word_error_rate(SAID["jfk.wav"], " ".join(finals)) <= 0.2, finals
    assert elapsed >= 11_000  # the 11 s recording took at least its own length to send
    await page.close()
