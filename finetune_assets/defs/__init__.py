"""Dagster definitions only: thin assets, checks, resources, partitions, sensors and schedules."""
