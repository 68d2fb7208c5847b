"""Models, the shared inference scheduler and worker pools."""
