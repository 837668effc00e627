"""Hooks that add to the environment of a command run as a lifecycle run's child.

A tracing adapter passes the run's trace context (``TRACEPARENT``) to the command this
way; anything a command should know about the run it is part of can travel so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._handle import Handle
from ._logging import logger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._event import Event

    ChildEnvironment = Callable[[Event], "Mapping[str, str] | None"]

__all__ = ["ChildEnvHook"]


class ChildEnvHook(Handle):
    """A connected child-environment hook; :meth:`detach` (or leaving ``with``) removes it.

    .. versionadded:: 0.2
    """

    __slots__ = ("_hook", "_hooks")

    def __init__(self, hooks: list[ChildEnvironment], hook: ChildEnvironment) -> None:
        self._hooks: list[ChildEnvironment] | None = hooks
        self._hook = hook
        hooks.append(hook)

    def detach(self) -> None:
        """Remove the hook. Detaching twice is harmless."""
        hooks, self._hooks = self._hooks, None
        if hooks is not None and self._hook in hooks:
            hooks.remove(self._hook)

    def _release(self) -> None:
        self.detach()


def child_environment(hooks: list[ChildEnvironment], starting: Event) -> dict[str, str]:
    """What the hooks add for the run that ``starting`` began; a failing hook adds nothing."""
    added: dict[str, str] = {}
    for hook in list(hooks):
        try:
            extra = hook(starting)
            if extra:
                for key, value in extra.items():
                    if not isinstance(key, str) or not isinstance(value, str):
                        raise TypeError(f"{key!r}={value!r} is not a str=str pair")
                    added[key] = value
        except Exception as exc:
            # The command runs all the same: a hook only adds to its environment.
            logger.warning(
                "child environment hook failed; its variables are left out",
                hook=getattr(hook, "__qualname__", repr(hook)),
                error=f"{type(exc).__name__}: {exc}",
            )
    return added
