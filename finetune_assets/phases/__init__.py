"""Pure Python phases of the factory: one module per phase, no dagster imports, testable alone."""
