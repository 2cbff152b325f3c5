"""The load test: backup-and-restore cycles through a real Prefect server and a process
worker while writers keep writing (benchmarks/load/run.py)."""
