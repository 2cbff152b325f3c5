"""backstop: backup and restore of ZooKeeper, Docstore and Schemaless as Prefect flows.

The repository root is this package; its layers are the folders `drivers/`, `tasks/`,
`flows/` and `deployments/`, and imports point one way: deployments -> flows -> tasks
-> drivers.
"""

__version__ = "0.1.0"
