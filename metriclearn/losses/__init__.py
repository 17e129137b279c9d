"""metriclearn.losses (see DESIGN.md)."""
