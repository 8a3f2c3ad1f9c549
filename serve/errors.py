"""The service's own failure kinds, each answered with one HTTP status by api.py."""


class Overloaded(Exception):
    """A queue is full: retry later (503)."""


class ShardUnavailable(Exception):
    """A shard could not answer (replica died, restarting): retry shortly (503)."""


class NotAvailable(Exception):
    """This service was started without what the call needs, e.g. a caption index (404)."""


class TooLarge(Exception):
    """A request's payload is over one of the service's size limits (413)."""
