"""Test doubles that ship with Launchbay, for its own tests and for yours.

- :class:`RecordingReporter` records what a launcher reports (logs, progress, steps).
- :class:`ScriptedLauncher` plays the runs a test scripts (:class:`Run`: lines, exit,
  launch errors, "run until stopped", artifacts) and records every call, for driving an
  attempt (``workers/attempt.py``) in milliseconds on the in-memory core
  (``orchestrator/testing.py``).
- :class:`FakeKubernetes` is a FAKE Kubernetes API server: an in-process HTTP server that
  answers the few batch/v1 and core/v1 endpoints the kubernetes launcher calls, so the
  real ``kubernetes`` client code path runs end to end without a cluster. Its "kubelet"
  runs each pod's container command as a local process (no image is pulled, no
  isolation): it is a fake, good for testing the launcher's lifecycle, nothing more.

The reporter lives in :mod:`workers.testing.reporter`, the scripted launcher in
:mod:`workers.testing.launcher`, the fake in
:mod:`workers.testing.kubernetes` (its HTTP side in :mod:`workers.testing.kubernetes_http`).
"""

from workers.testing.kubernetes import FakeKubernetes
from workers.testing.launcher import Run, ScriptedLauncher
from workers.testing.reporter import RecordingReporter

__all__ = ["FakeKubernetes", "RecordingReporter", "Run", "ScriptedLauncher"]
