"""Real container engines for the tests: a private dockerd, Podman and containerd settings,
the test image, and teardown that leaves nothing running (docs/facts.md#f-engines)."""
