"""The answer form, generated from the JSON Schema stored with the question.

A boolean or an enum becomes buttons (one click answers); an object becomes one field per
property; any other schema a JSON text area. A question without a schema gets a free-text
field. The form's values are turned back into the JSON answer here; checking that answer
against the schema is ``resume``'s job, so the page and the API are held to one rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AnswerForm", "FormError", "FormField", "answer_form", "read_answer"]

FieldKind = Literal["text", "integer", "number", "checkbox", "select", "json"]
#: Button labels for a yes/no question.
_YES_NO = (("true", "Approve", "approve"), ("false", "Reject", "reject"))
_FIELD_PREFIX = "field:"


class FormError(ValueError):
    """A form value that is not what its field takes (``field`` names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class FormField:
    name: str  # the property's name ("" for a single value)
    label: str
    kind: FieldKind
    required: bool
    description: str = ""
    options: tuple[tuple[str, str], ...] = ()  # (the value as JSON text, its label)

    @property
    def input_name(self) -> str:
        return _FIELD_PREFIX + self.name


@dataclass(frozen=True)
class AnswerForm:
    """``buttons``: (value as JSON text, label, style); ``fields`` for an object or a
    single value; ``free``: a question without a schema (the answer is the text)."""

    kind: Literal["buttons", "fields", "free"]
    buttons: tuple[tuple[str, str, str], ...] = ()
    fields: tuple[FormField, ...] = ()
    title: str = ""
    description: str = ""
    single: bool = False  # fields: one value, not an object
    schema: Mapping[str, Any] = field(default_factory=dict)


def _resolve(schema: Any, root: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema a ``$ref`` names, without a ``null`` alternative; and whether null is
    allowed. Unknown shapes come back as they are (and get a JSON field)."""
    nullable = False
    for _ in range(32):  # a ref to a ref ...; never loop on a cycle
        if not isinstance(schema, Mapping):
            return {}, nullable
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, Mapping) else None
            schema = target
            continue
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(alternatives, list):
            others = [a for a in alternatives if not _is_null(a)]
            if len(others) == 1 and len(others) < len(alternatives):
                nullable = True
                schema = others[0]
                continue
        kind = schema.get("type")
        if isinstance(kind, list) and "null" in kind and len(kind) == 2:
            nullable = True
            schema = {**schema, "type": next(k for k in kind if k != "null")}
        return dict(schema), nullable
    return {}, nullable


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _choices(schema: Mapping[str, Any]) -> list[Any] | None:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    return None


def _field(name: str, schema: Any, root: Mapping[str, Any], required: bool) -> FormField:
    resolved, nullable = _resolve(schema, root)
    label = str(resolved.get("title") or name or "Answer")
    description = str(resolved.get("description") or "")
    required = required and not nullable
    choices = _choices(resolved)
    kind = resolved.get("type")
    if choices is not None:
        options = tuple((_json(c), c if isinstance(c, str) else _json(c)) for c in choices)
        return FormField(name, label, "select", required, description, options)
    simple: dict[Any, FieldKind] = {
        "string": "text", "integer": "integer", "number": "number", "boolean": "checkbox"
    }
    return FormField(name, label, simple.get(kind, "json"), required, description)


def answer_form(schema: Mapping[str, Any] | None) -> AnswerForm:
    """The form for an answer of this schema (None: a question asked without one)."""
    if schema is None:
        return AnswerForm("free")
    resolved, _ = _resolve(schema, schema)
    title = str(resolved.get("title") or "")
    description = str(resolved.get("description") or "")
    if resolved.get("type") == "boolean":
        return AnswerForm("buttons", _YES_NO, title=title, description=description, schema=schema)
    choices = _choices(resolved)
    if choices is not None:
        buttons = tuple(
            (_json(c), c if isinstance(c, str) else _json(c), "choice") for c in choices
        )
        return AnswerForm("buttons", buttons, title=title, description=description, schema=schema)
    properties = resolved.get("properties")
    if resolved.get("type") == "object" and isinstance(properties, Mapping) and properties:
        required = resolved.get("required") or []
        fields = tuple(
            _field(str(name), sub, schema, name in required) for name, sub in properties.items()
        )
        return AnswerForm(
            "fields", fields=fields, title=title, description=description, schema=schema
        )
    single = _field("", schema, schema, required=True)
    return AnswerForm(
        "fields", fields=(single,), title=title, description=description, single=True, schema=schema
    )


def read_answer(form: AnswerForm, values: Mapping[str, str]) -> Any:
    """The JSON answer a submitted form gives; FormError for a value its field refuses."""
    if form.kind == "free":
        return values.get("answer", "")
    if form.kind == "buttons":
        chosen = values.get("answer")
        allowed = {value for value, _, _ in form.buttons}
        if chosen not in allowed:
            raise FormError("answer", "choose one of the buttons")
        return json.loads(chosen)
    answer: dict[str, Any] = {}
    for f in form.fields:
        raw = values.get(f.input_name)
        value = _read_field(f, raw)
        if value is _MISSING:
            if f.required:
                raise FormError(f.label, "is required")
            continue
        if form.single:
            return value
        answer[f.name] = value
    return None if form.single else answer


_MISSING = object()


def _read_field(f: FormField, raw: str | None) -> Any:
    if f.kind == "checkbox":
        return raw is not None
    if raw is None or (raw.strip() == "" and f.kind != "text"):
        return _MISSING
    if f.kind == "text":
        return raw if raw or f.required else _MISSING
    if f.kind == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            raise FormError(f.label, f"{raw!r} is not a whole number") from None
    if f.kind == "number":
        try:
            number = float(raw.strip())
        except ValueError:
            raise FormError(f.label, f"{raw!r} is not a number") from None
        return int(number) if number.is_integer() and "." not in raw else number
    if f.kind == "select":
        if raw not in {value for value, _ in f.options}:
            raise FormError(f.label, "choose one of the options")
        return json.loads(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise FormError(f.label, f"not valid JSON ({exc})") from None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
