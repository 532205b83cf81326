"""Errors a user can hit, each with a message that says what to do and a stable exit code."""


class PeercloudError(Exception):
    """Base of every expected failure; the CLI prints its message on one line and exits."""

    exit_code = 1


class UsageError(PeercloudError):
    """The user asked for something malformed: a bad cap, an unknown class, a bad size."""

    exit_code = 2


class NotFoundError(PeercloudError):
    """The thing named (object, block, node home) does not exist here."""

    exit_code = 3


class QuotaExceededError(PeercloudError):
    """Storing more would exceed the node's configured quota."""

    exit_code = 4


class IntegrityError(PeercloudError):
    """Data failed verification: a corrupt block, a wrong key, a tampered manifest."""

    exit_code = 5


class FormatError(IntegrityError):
    """Bytes from disk or a peer do not decode as the format they claim to be."""


class DaemonNeededError(PeercloudError):
    """The command needs the network, so the daemon (`peercloud up`) must be running."""

    exit_code = 6


class RefusedError(PeercloudError):
    """The cloud said no: not a member, not an admin, an invite used up, a class minimum."""

    exit_code = 7
