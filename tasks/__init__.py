"""Prefect tasks around the drivers, and the artifact store they write to."""
