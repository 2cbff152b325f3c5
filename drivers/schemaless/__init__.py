"""Schemaless: append-only cell tables in SQLite, PostgreSQL or MySQL/MariaDB shards."""

from backstop.drivers.schemaless.driver import SchemalessDriver

__all__ = ["SchemalessDriver"]
