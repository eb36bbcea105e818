"""SQL tables of the mail domain (beside :mod:`acmeq.storage.models`)."""
