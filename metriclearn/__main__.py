"""``python -m metriclearn`` is the same as the ``metriclearn`` console script."""

from metriclearn.cli import main

if __name__ == "__main__":
    main()
