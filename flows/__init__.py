"""Prefect flows (backup, restore, verify) and the `backstop` command line."""
