"""profiler/analysis."""
