"""Alembic revisions of acmeq's schema (a package only so that setuptools ships the files)."""
