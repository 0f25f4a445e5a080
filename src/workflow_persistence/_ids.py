"""Workflow id validation, done before any I/O by every backend."""

from __future__ import annotations

from .errors import InvalidWorkflowIdError

MAX_WORKFLOW_ID_LENGTH = 255


def check_workflow_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it is a valid id, else raise InvalidWorkflowIdError.

    Any non-empty ``str`` of at most 255 code points is valid (see the README), with
    two exceptions no backend can store alike: NUL (PostgreSQL text cannot hold it) and
    lone surrogates (not encodable as UTF-8). Ids are compared by exact code points, so
    no normalisation happens here.
    """
    if (
        type(workflow_id) is str
        and 0 < len(workflow_id) <= MAX_WORKFLOW_ID_LENGTH
        and "\x00" not in workflow_id
        and (workflow_id.isascii() or encodable(workflow_id))
    ):
        return workflow_id
    if not isinstance(workflow_id, str):
        raise InvalidWorkflowIdError(
            f"a workflow id must be a str, not {type(workflow_id).__name__}"
        )
    if not workflow_id:
        raise InvalidWorkflowIdError("a workflow id must not be empty")
    if len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
        raise InvalidWorkflowIdError(
            f"a workflow id has at most {MAX_WORKFLOW_ID_LENGTH} characters,"
            f" this one has {len(workflow_id)}"
        )
    if "\x00" in workflow_id:
        raise InvalidWorkflowIdError(
            "a workflow id must not contain NUL (\\x00): PostgreSQL cannot store it"
        )
    if not encodable(workflow_id):
        raise InvalidWorkflowIdError(
            "a workflow id must be valid Unicode text; this one has a lone surrogate"
        )
    # A str subclass: store the plain str so backends never see a custom type.
    return str.__str__(workflow_id)


def encodable(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
