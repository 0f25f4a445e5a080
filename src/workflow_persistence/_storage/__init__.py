"""The storage backends behind the one persistence interface: in memory, files, and a
database (with the connections and deadlines its calls run under).

Users import the backends from ``workflow_persistence``; the modules here are private.
"""
