"""profiler/recorder."""
