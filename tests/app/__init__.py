"""Tests of app/: the replica server (server/, one module of tests per module), the trainer, the
images, and the suites that run the replica as a whole (conformance, promotion, shutdown, GPU)."""
