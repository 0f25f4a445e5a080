"""RetryPolicy: how often a failing node is tried, and how long to wait in between."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute a node carries its own policy in (set by using a policy as a decorator).
POLICY_ATTRIBUTE = "retry_policy"


@dataclass(frozen=True)
class RetryPolicy:
    """Try a node up to ``max_attempts`` times, waiting ``backoff`` seconds after the
    first failure and ``multiplier`` times longer after each next one (at most
    ``max_backoff``). Only exceptions in ``retry_on`` are retried, and never one that is
    not an ``Exception`` (KeyboardInterrupt, SystemExit): those ask the program to stop.

    A node carries its own policy by being decorated with one::

        @RetryPolicy(max_attempts=5, backoff=0.5)
        def fetch(event: StartEvent, state: WorkflowState) -> Fetched: ...
    """

    max_attempts: int = 3
    backoff: float = 0.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ValueError("max_attempts must be an int >= 1")
        if self.backoff < 0 or self.multiplier < 1 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0, multiplier >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure before the next attempt."""
        return min(self.max_backoff, self.backoff * self.multiplier ** (failures - 1))

    def retries(self, exc: BaseException, failures: int) -> bool:
        """Whether a node that has failed ``failures`` times gets another attempt."""
        return (
            failures < self.max_attempts
            and isinstance(exc, Exception)
            and isinstance(exc, self.retry_on)
        )

    def __call__(self, node: F) -> F:
        """Use the policy as a decorator: the node carries it."""
        setattr(node, POLICY_ATTRIBUTE, self)
        return node


NO_RETRY = RetryPolicy(max_attempts=1)
