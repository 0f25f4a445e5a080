"""Turning a snapshot into bytes and back, safely: the value codec, the record header,
the serializers, and the plain-JSON columns a stored run repeats for queries.

Users import the serializers from ``workflow_persistence``; the modules here are private.
"""
