"""dashboard/data."""
