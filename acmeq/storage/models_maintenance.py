"""SQL tables of the maintenance domain (beside :mod:`acmeq.storage.models`)."""
