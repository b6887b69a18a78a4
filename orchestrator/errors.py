"""Error types shared by every room; the API maps them to HTTP problems in one place."""

from __future__ import annotations


class LaunchbayError(Exception):
    """Base of Launchbay's own errors."""

    status_code = 500


class JobNotFound(LaunchbayError):
    status_code = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(LaunchbayError):
    """A transition the state machine does not allow, or a compare-and-set that lost."""

    status_code = 409

    def __init__(self, job_id: str, current: str, wanted: str, why: str = "") -> None:
        msg = f"job {job_id} is {current}; cannot move to {wanted}"
        super().__init__(f"{msg}: {why}" if why else msg)
        self.job_id, self.current, self.wanted = job_id, current, wanted


class JobNotEnded(LaunchbayError):
    status_code = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is {status}; it has not ended")


class ParamError(LaunchbayError, ValueError):
    """A job parameter that does not fit its schema; ``field`` names it."""

    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class BrokerUnavailable(LaunchbayError):
    status_code = 503


class ArtifactNotFound(LaunchbayError):
    status_code = 404


class UnsafePath(LaunchbayError):
    status_code = 400


class ArtifactConflict(LaunchbayError):
    """An artifact name that a file and a folder of the same job would both need."""

    status_code = 409


class RunnerLaunchError(LaunchbayError):
    """A launcher could not start a job; ``transient`` errors are retried."""

    def __init__(
        self, launcher: str, attempt: int, cause: BaseException | str, *, transient: bool = False
    ) -> None:
        self.launcher, self.attempt, self.cause, self.transient = (
            launcher,
            attempt,
            cause,
            transient,
        )
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{launcher} launcher failed on launch attempt {attempt}: {text}")
