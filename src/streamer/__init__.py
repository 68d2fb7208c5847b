"""streamer: bidirectional streaming audio APIs for blocking models."""

__version__ = "0.1.0"
