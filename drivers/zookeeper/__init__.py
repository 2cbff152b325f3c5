"""ZooKeeper: logical tree walks (any version) and admin-server snapshots (3.9+)."""

from backstop.drivers.zookeeper.driver import ZooKeeperDriver

__all__ = ["ZooKeeperDriver"]
