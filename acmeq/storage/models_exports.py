"""SQL tables of the exports domain (beside :mod:`acmeq.storage.models`)."""
