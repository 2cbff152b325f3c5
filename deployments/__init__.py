"""Prefect deployments of the backstop flows (schedules, parameters, work pools)."""
