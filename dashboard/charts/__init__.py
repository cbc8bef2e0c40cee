"""dashboard/charts."""
