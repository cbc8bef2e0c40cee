"""profiler/session."""
