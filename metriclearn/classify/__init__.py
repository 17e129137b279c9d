"""metriclearn.classify (see DESIGN.md)."""
