"""metriclearn.reports (see DESIGN.md)."""
