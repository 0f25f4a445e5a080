"""Turning a list of node callables into a checked graph of event handlers."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from workflow_persistence._events import Event, StartEvent, StopEvent
from workflow_persistence.errors import WorkflowDefinitionError

from .retry import POLICY_ATTRIBUTE, RetryPolicy

Node = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class NodeSpec:
    """One node: its callable, the event it handles, what it may return, its policy, and
    whether calling it gives a coroutine to await (``async def``, or an async ``__call__``)."""

    name: str
    fn: Node
    handles: type[Event]
    returns: tuple[type[Event], ...] | None  # None: not declared (checked at run time)
    retry: RetryPolicy | None
    is_async: bool = False


def node_name(node: object) -> str:
    """A function's ``__name__``; a callable instance's class name."""
    if inspect.isfunction(node) or inspect.ismethod(node) or inspect.isbuiltin(node):
        return str(node.__name__)
    return type(node).__name__


def _callable_for_hints(node: object) -> Callable[..., Any]:
    if inspect.isfunction(node) or inspect.ismethod(node):
        return node
    call = getattr(type(node), "__call__", None)  # noqa: B004 - the class's, not a proxy's
    if call is None:
        raise WorkflowDefinitionError(f"node {node!r} is not callable")
    return call  # type: ignore[no-any-return]


def _namespace(fn: Callable[..., Any], known: Iterable[type]) -> dict[str, Any]:
    """Names a string annotation may use beyond the module's globals.

    Classes defined inside a function are not in the module's globals; they can be
    found among the workflow's ``types``, the other nodes' events, and the closure.
    """
    names: dict[str, Any] = {cls.__name__: cls for cls in (Event, StartEvent, StopEvent)}
    names.update({cls.__name__: cls for cls in known})
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None) or ()
    if code is not None:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                names[name] = cell.cell_contents
            except ValueError:
                continue
    return names


def _resolve(annotation: Any, fn: Callable[..., Any], known: Iterable[type]) -> Any:
    """Evaluate a string annotation (quoted under ``from __future__ import annotations``
    it is a string holding a string, hence the loop)."""
    module_globals = getattr(fn, "__globals__", {})
    for _ in range(3):
        if not isinstance(annotation, str):
            return annotation
        try:
            annotation = eval(annotation, module_globals, _namespace(fn, known))  # noqa: S307
        except Exception:
            return None
    return None


def _event_types(annotation: Any) -> tuple[type[Event], ...] | None:
    """The Event classes a return annotation names, or None if it names anything else."""
    if annotation is None or annotation is inspect.Signature.empty:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        found: list[type[Event]] = []
        for arg in typing.get_args(annotation):
            inner = _event_types(arg)
            if inner is None:
                return None
            found.extend(inner)
        return tuple(found)
    if isinstance(annotation, type) and issubclass(annotation, Event) and annotation is not Event:
        return (annotation,)
    return None


def _positional_params(signature: inspect.Signature, name: str) -> list[inspect.Parameter]:
    try:
        signature.bind(None, None)
    except TypeError:
        raise WorkflowDefinitionError(
            f"node {name!r} must take two positional arguments: (event, state)"
        ) from None
    return [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def inspect_node(node: object, known: Iterable[type]) -> NodeSpec:
    """Read a node's event type from the annotation of its first parameter."""
    if not callable(node):
        raise WorkflowDefinitionError(f"node {node!r} is not callable")
    name = node_name(node)
    fn = _callable_for_hints(node)
    try:
        signature = inspect.signature(node)
    except (TypeError, ValueError) as exc:
        raise WorkflowDefinitionError(f"cannot read the signature of node {name!r}: {exc}") from exc
    params = _positional_params(signature, name)
    if not params:
        raise WorkflowDefinitionError(
            f"node {name!r} must name its parameters, (event: SomeEvent, state), so the"
            " annotation of the first says which event it handles"
        )
    first = params[0]
    handles = _resolve(first.annotation, fn, known)
    if first.annotation is inspect.Parameter.empty:
        raise WorkflowDefinitionError(
            f"node {name!r} needs a type annotation on its first parameter naming the"
            f" event it handles, e.g. def {name}(event: StartEvent, state): ..."
        )
    if handles is None:
        raise WorkflowDefinitionError(
            f"node {name!r}: cannot resolve the annotation {first.annotation!r} of its"
            " first parameter; define the event class at module level or pass it in"
            " Workflow(..., types=[...])"
        )
    if not (isinstance(handles, type) and issubclass(handles, Event)) or handles is Event:
        raise WorkflowDefinitionError(
            f"node {name!r}: the annotation of its first parameter must be an Event"
            f" subclass, not {handles!r}"
        )
    if handles is StopEvent:
        raise WorkflowDefinitionError(
            f"node {name!r} handles StopEvent, which ends a run; no node may handle it"
        )
    if "__dataclass_fields__" not in vars(handles):  # inherited from Event does not count
        raise WorkflowDefinitionError(
            f"node {name!r} handles {handles.__qualname__}, which is not a dataclass;"
            " decorate the event class with @dataclass"
        )
    returns = _event_types(_resolve(signature.return_annotation, fn, known))
    policy = getattr(node, POLICY_ATTRIBUTE, None)
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise WorkflowDefinitionError(f"node {name!r}: {POLICY_ATTRIBUTE} must be a RetryPolicy")
    is_async = inspect.iscoroutinefunction(node) or inspect.iscoroutinefunction(fn)
    return NodeSpec(name, node, handles, returns, policy, is_async)


def build_graph(nodes: Iterable[object], types_: Iterable[type]) -> dict[type[Event], NodeSpec]:
    """Check the nodes form a workflow; return the node for each event type."""
    nodes = list(nodes)
    if not nodes:
        raise WorkflowDefinitionError("a workflow needs at least one node")
    known = list(types_)
    # Annotations may name events that only appear as other nodes' parameters.
    for node in nodes:
        try:
            known.append(inspect_node(node, known).handles)
        except WorkflowDefinitionError:
            continue
    specs = [inspect_node(node, known) for node in nodes]
    by_event: dict[type[Event], NodeSpec] = {}
    by_name: dict[str, NodeSpec] = {}
    for spec in specs:
        if spec.handles in by_event:
            raise WorkflowDefinitionError(
                f"nodes {by_event[spec.handles].name!r} and {spec.name!r} both handle"
                f" {spec.handles.__qualname__}; one node per event type"
            )
        if spec.name in by_name:
            raise WorkflowDefinitionError(
                f"two nodes are named {spec.name!r}; node names must differ"
            )
        by_event[spec.handles] = spec
        by_name[spec.name] = spec
    if StartEvent not in by_event:
        raise WorkflowDefinitionError("no node handles StartEvent, so a run cannot begin")
    for spec in specs:
        for returned in spec.returns or ():
            if returned is not StopEvent and returned not in by_event:
                raise WorkflowDefinitionError(
                    f"node {spec.name!r} returns {returned.__qualname__}, which no node handles"
                )
    return by_event
