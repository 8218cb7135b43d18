"""Errors a user or a source can cause. Their messages are one sentence, safe to show and log."""


class WriteVueError(Exception):
    """Base class: the message says what went wrong and what to do, and holds no secret."""


class NotFound(WriteVueError):
    pass


class InvalidInput(WriteVueError):
    pass


class SourceError(WriteVueError):
    """A source could not be read for one connection; other connections carry on."""

    def __init__(
        self, message: str, *, connection_id: str | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.connection_id = connection_id
        self.status = status

    @classmethod
    def of_connection(cls, connection_id: str, message: str, *, status: int | None = None):
        """One connection's error: ``connection <id>: <message>``, the id kept for callers."""
        return cls(
            f"connection {connection_id}: {message}", connection_id=connection_id, status=status
        )


class CredentialRejected(SourceError):
    """The source refused the stored credential, or it cannot be read back: the connection
    needs reconnecting (its key or password re-entered, its OAuth grant renewed), and
    retrying without that changes nothing."""
