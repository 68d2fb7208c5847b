"""deploy/k8s: every manifest validates against the Kubernetes schemas (kubernetes-validate,
offline), and the parts agree: readiness on the health route, a grace period longer than the
drain, a disruption budget and an autoscaler for the Deployment, the Ray Serve application
that the server's ray backend imports."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES = "1.30.0"


def manifests() -> list[dict[str, Any]]:
    found = [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert found
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def test_the_built_in_kinds_validate_against_the_schemas() -> None:
    checked = 0
    for doc in manifests():
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # a custom resource: its schema is KubeRay's CRD, checked below
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        checked += 1
    assert checked >= 4


def test_readiness_drain_and_grace_agree() -> None:
    (deployment,) = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    env = {e["name"]: float(e["value"]) for e in container["env"] if e["value"][0].isdigit()}
    drain = env["STREAMER_SERVER__DRAIN_SECONDS"] + env["STREAMER_SERVER__SHUTDOWN_TIMEOUT_SECONDS"]
    assert pod["terminationGracePeriodSeconds"] > drain
    assert "--workers" in container["args"]
    name = deployment["metadata"]["name"]
    (pdb,) = of_kind("PodDisruptionBudget")
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == name


# Ray Serve's own models use a pydantic form that pydantic deprecates.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
def test_the_ray_service_imports_the_servers_deployment() -> None:
    (service,) = of_kind("RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is not None
    (deployment,) = application["deployments"]
    assert deployment["name"] == "StreamerModel"
    assert set(deployment["autoscaling_config"]) >= {"min_replicas", "max_replicas"}
