"""SQL tables of the payments domain (beside :mod:`acmeq.storage.models`)."""
