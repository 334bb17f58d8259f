"""The SQL store: every message, mailbox, account and queue row Tidings keeps."""

from tidings.store.db import Store, StoreError

__all__ = ["Store", "StoreError"]
