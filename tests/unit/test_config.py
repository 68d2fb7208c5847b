"""Settings layers: defaults, then the file, then the environment, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.config import SettingsError, load_settings


def test_defaults() -> None:
    settings = load_settings()
    assert settings.server.port == 8080
    assert settings.model.delay == 0.0


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "streamer.toml"
    path.write_text(
        "[server]\nport = 9000\nhost = '127.0.0.1'\n[model]\ndelay = 0.5\njitter = 0.1\n"
    )
    settings = load_settings(path)
    assert (settings.server.port, settings.server.host) == (9000, "127.0.0.1")
    assert (settings.model.delay, settings.model.jitter) == (0.5, 0.1)

    monkeypatch.setenv("STREAMER_MODEL__DELAY", "0.25")
    monkeypatch.setenv("STREAMER_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert settings.model.delay == 0.25
    assert settings.model.jitter == 0.1  # the file's value survives beside the environment's
    assert settings.server.port == 9100

    settings = load_settings(path, server={"port": 9200})
    assert settings.server.port == 9200
    assert settings.server.host == "127.0.0.1"


def test_unknown_and_invalid_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\ndelay = -1\n")
    with pytest.raises(SettingsError, match=r"bad.toml: model\.delay: expected greater"):
        load_settings(path)
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown key 'server\.prot' \(expected one of: "):
        load_settings(path)
    with pytest.raises(SettingsError, match=r"command line: server\.port"):
        load_settings(server={"port": -5})
