"""SQL tables of the exports domain (beside :mod:`acmeq.storage.models`).

Exports need no table of their own: an export is one ``export_files`` row
(:class:`acmeq.storage.models.ExportFile`), extended by migration 0004 with ``spec``,
``include_pii`` and ``error``; donors' postal addresses are ``users.address``.
"""
