"""The OpenAPI 3.1 document of the inbox's JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ID = {
    "name": "workflow_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "description": "The csrf_token of GET /api/session (sent with that session's cookie).",
    "schema": {"type": "string"},
}
_DETAIL = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    }
}
_REFUSALS = {
    "400": {"description": "A malformed request", **_DETAIL},
    "401": {"description": "Not signed in (authorize returned None)", **_DETAIL},
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_RUN_LISTED = {
    "type": "object",
    "properties": {
        "workflow_id": {"type": "string"},
        "workflow_name": {"type": ["string", "null"]},
        "status": {"type": "string"},
        "version": {"type": "integer"},
        "current_node": {"type": ["string", "null"]},
        "question": {},
        "metadata": {"type": "object"},
        "deadline": _TIME,
        "overdue": {"type": "boolean"},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    "required": ["workflow_id", "status", "version"],
}
_DECISION = {
    "type": "object",
    "properties": {
        "node": {"type": "string"},
        "question": {},
        "answer": {},
        "asked_at": _TIME,
        "answered_at": _TIME,
        "answered_by": {"type": ["string", "null"]},
        "answered_via": {"type": ["string", "null"]},
        "deadline": _TIME,
    },
}
_RUN = {
    "type": "object",
    "properties": {
        **_RUN_LISTED["properties"],  # type: ignore[dict-item]
        "completed_nodes": {"type": "array", "items": {"type": "string"}},
        "answer_schema": {"type": ["object", "null"]},
        "state": {},
        "history": {"type": "array", "items": _DECISION},
        "error": {},
        "mermaid": {"type": "string"},
    },
    "required": ["workflow_id", "status", "version", "history", "mermaid"],
}
_OUTCOME = {
    "type": "object",
    "properties": {
        "workflow_id": {"type": "string"},
        "status": {"type": "string", "enum": ["completed", "interrupted", "failed"]},
        "detail": {"type": "string"},
    },
    "required": ["workflow_id", "status", "detail"],
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, body: dict[str, Any], conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_ID, _CSRF],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body}},
            },
            "responses": {
                "200": _json(_OUTCOME, "Done: the run's new status"),
                **_REFUSALS,
                "403": {"description": "Read-only access, or a missing or wrong CSRF token",
                        **_DETAIL},
                "404": {"description": "No such run visible to this user", **_DETAIL},
                "409": {"description": conflict, **_DETAIL},
                "422": {"description": "The answer does not fit the question's schema",
                        **_DETAIL},
            },
        }
    }


def openapi_document(root: str) -> dict[str, Any]:
    """The document, with the app's mount path as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "workflow-persistence approvals inbox",
            "version": "1",
            "description": "List, read, answer and retry the runs that wait for a person.",
        },
        "servers": [{"url": root or "/"}],
        "paths": {
            "/api/session": {
                "get": {
                    "summary": "Who is signed in, and the CSRF token for POSTs",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "user": {"type": "string"},
                                    "can_answer": {"type": "boolean"},
                                    "csrf_token": {"type": "string"},
                                    "workflows": {"type": "array", "items": {"type": "string"}},
                                },
                                "required": ["user", "can_answer", "csrf_token"],
                            },
                            "The session",
                        ),
                        "401": _REFUSALS["401"],
                    },
                }
            },
            "/api/runs": {
                "get": {
                    "summary": "Waiting runs (or those of another status): overdue first",
                    "parameters": [
                        {"name": "workflow", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "meta", "in": "query", "description": "KEY=VALUE",
                         "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "overdue": {"type": "array", "items": _RUN_LISTED},
                                    "runs": {"type": "array", "items": _RUN_LISTED},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                                "required": ["overdue", "runs", "next_cursor"],
                            },
                            "One page",
                        ),
                        **_REFUSALS,
                    },
                }
            },
            "/api/runs/{workflow_id}": {
                "get": {
                    "summary": "One run: question, schema, state, history, picture",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(_RUN, "The run"),
                        **_REFUSALS,
                        "404": {"description": "No such run visible to this user", **_DETAIL},
                    },
                }
            },
            "/api/runs/{workflow_id}/answer": _post(
                "Answer a waiting run at the version shown",
                {
                    "type": "object",
                    "properties": {"version": {"type": "integer"}, "answer": {}},
                    "required": ["version", "answer"],
                },
                "Already answered: the run moved on from that version",
            ),
            "/api/runs/{workflow_id}/retry": _post(
                "Retry a failed run's node, at the version shown",
                {
                    "type": "object",
                    "properties": {"version": {"type": "integer"}},
                    "required": ["version"],
                },
                "Already retried: the run moved on from that version",
            ),
        },
    }
