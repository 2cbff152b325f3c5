"""Docstore: MongoDB-protocol document stores, documents kept as raw BSON."""

from backstop.drivers.docstore.driver import DocstoreDriver

__all__ = ["DocstoreDriver"]
