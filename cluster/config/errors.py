"""The one error a config raises: its message names the offending key."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""
