"""metriclearn.indexes (see DESIGN.md)."""
