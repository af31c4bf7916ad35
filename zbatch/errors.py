"""One error root for everything zbatch reports to a user.

Every error carries a one-line, user-facing message and a `transient` flag: transient errors
(a scheduler that timed out, an unreachable host) may succeed when retried, permanent ones
(a malformed recipe, a resource beyond the profile's limits) never will.
"""

from __future__ import annotations


class ZbatchError(Exception):
    """Base of every error zbatch raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        return self.message


class RecipeError(ZbatchError):
    """A recipe or step message that cannot be used as it is."""


class ProfileError(ZbatchError):
    """A site profile that is missing, malformed or refuses a request."""


class ParameterError(ZbatchError):
    """A step parameter that is unsafe, malformed or beyond the profile's limits."""


class TemplateError(ZbatchError):
    """A job-script template that is missing or fails to render."""


class SchedulerError(ZbatchError):
    """The scheduler refused a command or answered with something unreadable."""


class ClusterUnavailable(SchedulerError):
    """The scheduler's controller did not answer (restart, maintenance): wait, do not refuse."""

    transient = True


class ConnectionFailure(ZbatchError):
    """A host could not be reached or a command on it could not be run."""

    transient = True


class RestartNeeded(ConnectionFailure):
    """A library can load only in a process started with more environment (glibc reads
    GLIBC_TUNABLES once, at start). The zbatch command starts itself again with `environment`
    added, before it has done anything; other callers see a ConnectionFailure saying what to set.
    """

    transient = False

    def __init__(self, message: str, environment: dict[str, str]) -> None:
        super().__init__(message)
        self.environment = environment


class ClaimBusy(ZbatchError):
    """Another dispatcher may be submitting this very step right now: try again later."""

    transient = True


class TransportError(ZbatchError):
    """The message broker (or the embedded queue) failed."""

    transient = True


class WrapperError(ZbatchError):
    """A wrapper that cannot be found, loaded or run."""
