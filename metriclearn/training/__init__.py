"""metriclearn.training (see DESIGN.md)."""
