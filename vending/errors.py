"""The one exception tree of the service.

Every error a caller can see is a ``VendingError``. Each class carries a stable
kebab-case ``reason`` (the API contract), an HTTP ``http_status``, the
Google-style ``status`` string and whether the failure is ``retryable``
(Pub/Sub handlers raise retryable errors so the message is redelivered, and
acknowledge the rest). ``vending.api`` is the one place that turns them into
HTTP responses.

    VendingError
    +-- BadRequestError            400 INVALID_ARGUMENT
    +-- AuthenticationError        401 UNAUTHENTICATED   (generic message; detail logged)
    |   +-- JwksUnavailableError   503 UNAVAILABLE       (issuer keys unreachable; retryable)
    +-- PermissionDeniedError      403 PERMISSION_DENIED
    +-- NotFoundError              404 NOT_FOUND
    +-- MethodNotAllowedError      405 INVALID_ARGUMENT
    +-- ConflictError              409 ABORTED
    +-- RateLimitedError           429 RESOURCE_EXHAUSTED (retry_after seconds)
    +-- InternalError              500 INTERNAL
    +-- UpstreamError              502 UNAVAILABLE / FAILED_PRECONDITION
    +-- UnavailableError           503 UNAVAILABLE        (retryable)
    +-- ConfigError                (startup only: a bad settings or policy file)

Storage backends raise ``store.StoreConflict`` / ``StoreUnavailable`` (both
subclasses of the classes above) so nothing above ``vending.store`` sees a
``google.api_core`` or ``sqlite3`` exception.
"""

from __future__ import annotations


class VendingError(Exception):
    """Base class: a failure with a stable reason and an HTTP mapping."""

    http_status = 500
    status = "INTERNAL"
    reason = "internal"
    retryable = False
    logged = False  # set once the failure has its log line (the vend audit line), so nobody logs it again

    def __init__(self, message: str, *, reason: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        # ``detail`` is for the log only, never for the caller.
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class BadRequestError(VendingError):
    http_status = 400
    status = "INVALID_ARGUMENT"
    reason = "invalid-argument"


class AuthenticationError(VendingError):
    """The caller could not be authenticated. The message stays generic."""

    http_status = 401
    status = "UNAUTHENTICATED"
    reason = "unauthenticated"

    GENERIC = "The request does not carry a valid identity token for this service."

    def __init__(self, detail: str, *, reason: str = "invalid-token") -> None:
        super().__init__(self.GENERIC, reason=reason, detail=detail)


class JwksUnavailableError(AuthenticationError):
    """The issuer's keys could not be fetched: not the caller's fault, so 503 and retryable."""

    http_status = 503
    status = "UNAVAILABLE"
    retryable = True

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="jwks-unavailable")
        self.message = "The identity provider's signing keys could not be fetched; retry later."


class PermissionDeniedError(VendingError):
    http_status = 403
    status = "PERMISSION_DENIED"
    reason = "permission-denied"


class NotFoundError(VendingError):
    http_status = 404
    status = "NOT_FOUND"
    reason = "not-found"


class MethodNotAllowedError(VendingError):
    http_status = 405
    status = "INVALID_ARGUMENT"
    reason = "method-not-allowed"


class ConflictError(VendingError):
    http_status = 409
    status = "ABORTED"
    reason = "conflict"


class RateLimitedError(VendingError):
    http_status = 429
    status = "RESOURCE_EXHAUSTED"
    reason = "rate-limited"
    retryable = True

    def __init__(
        self, message: str, *, retry_after: int = 1, reason: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, reason=reason, detail=detail)
        self.retry_after = max(1, int(retry_after))


class InternalError(VendingError):
    http_status = 500
    status = "INTERNAL"
    reason = "internal"


class UpstreamError(VendingError):
    """The IAM Credentials API refused or failed in a way the caller cannot fix."""

    http_status = 502
    status = "UNAVAILABLE"
    reason = "upstream-error"


class UnavailableError(VendingError):
    http_status = 503
    status = "UNAVAILABLE"
    reason = "unavailable"
    retryable = True


class ConfigError(VendingError):
    """A settings or policy file is invalid; raised at cold start only."""

    reason = "config-invalid"
