"""The app's Alembic environment; a package only so type checkers tell its env.py apart."""
