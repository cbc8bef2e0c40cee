"""Test helpers shared by tests, bench and sessions: the tiny model, workloads, engines, ports."""
