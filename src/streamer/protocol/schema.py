"""Print the JSON Schema of protocol v1: ``python -m streamer.protocol.schema``."""

from __future__ import annotations

import json

from streamer.protocol.messages import json_schemas


def render() -> str:
    """The schema document as committed in docs/protocol.schema.json."""
    return json.dumps(json_schemas(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
