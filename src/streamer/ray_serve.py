"""The model tier's Ray Serve application, for ``serve run streamer.ray_serve:app`` and a
KubeRay RayService (``deploy/k8s/rayservice.yaml``): the model the environment's settings
(``STREAMER_*``) name, read where the application is imported, on the cluster.

Needs the ``ray`` extra. A front-end with ``inference.backend = "ray"`` and
``ray.deploy = false`` uses this application as it runs.
"""

from __future__ import annotations

from typing import Any

from streamer.app import model_factory
from streamer.config import Settings
from streamer.inference.ray_backend import application

_settings = Settings()

app: Any = application(
    _settings.ray,
    model_factory(_settings),
    _settings.inference.model,
    panic_kills_process=_settings.model.panic_kills_process,
)
"""The application with the settings of the environment."""
