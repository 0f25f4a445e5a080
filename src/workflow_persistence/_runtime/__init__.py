"""The workflow runtime: nodes and their graph, ``interrupt()``, retries, ``Workflow``.

Users import these names from ``workflow_persistence``; the modules here are private.
"""
