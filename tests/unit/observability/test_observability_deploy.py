"""deploy/: the files parse, and the parts of the stack point at each other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def load(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


def compose() -> dict[str, Any]:
    document = load("docker-compose.yml")
    assert isinstance(document, dict)
    return document


def volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) of a service's bind mounts."""
    mounts = {}
    for spec in service.get("volumes", []):
        host, container, *_ = spec.split(":")
        mounts[container] = host
    return mounts


def test_the_stack_has_the_server_prometheus_grafana_and_jaeger() -> None:
    services = compose()["services"]
    assert set(services) >= {"streamer", "prometheus", "grafana", "jaeger"}
    streamer = services["streamer"]
    assert (DEPLOY / streamer["build"]["context"] / streamer["build"]["dockerfile"]).is_file()
    env = streamer["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert "8080:8080" in streamer["ports"]
    jaeger = services["jaeger"]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "4317:4317" in jaeger["ports"]


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for host in volumes(service).values():
            assert (DEPLOY / host).exists(), f"{name} mounts missing {host}"


def test_prometheus_scrapes_the_servers_metrics_route() -> None:
    services = compose()["services"]
    mounts = volumes(services["prometheus"])
    config_path = next(
        arg.split("=", 1)[1]
        for arg in services["prometheus"]["command"]
        if arg.startswith("--config.file=")
    )
    config = load(mounts[config_path])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]


def test_the_image_installs_the_package_and_serves_on_the_exposed_port() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install ." in text and "silero-vad" not in text  # the package ships the VAD
    assert re.search(r"^EXPOSE 8080\b", text, re.M)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert cmd[:2] == ["streamer", "serve"] and cmd[cmd.index("--port") + 1] == "8080"


def test_grafana_gets_the_datasource_and_the_dashboards_from_the_repository() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = volumes(grafana)
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    dashboards = DEPLOY / mounts[provider["options"]["path"]]
    assert list(dashboards.glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"])
    assert (dashboards / Path(home).name).is_file()


def test_the_dashboard_is_well_formed() -> None:
    grafana = compose()["services"]["grafana"]
    provisioning = DEPLOY / volumes(grafana)["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    prometheus_uid = next(d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus")
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "streamer.json").read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] and dashboard["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == prometheus_uid
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")")
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
