"""The one exception of the graph package."""


class Untraceable(Exception):
    """The fast path cannot represent this model faithfully; use the naive scheme."""
