"""Acceptance tests: the ``gearstore`` command as a subprocess, killed and restarted."""
