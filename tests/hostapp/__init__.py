"""A host application with its own declarative Base, used by test_host_app."""
