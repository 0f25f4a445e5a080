"""The SQL layer's internals: every statement per database family, the code that runs them
on a DBAPI cursor, MySQL's specifics, and what Alembic's autogenerate must know.

Its public faces are modules of the package root: ``models`` (the table),
``repository`` (rows in the caller's Session), ``migrations`` and ``types``.
"""
