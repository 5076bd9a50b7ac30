"""The one exception type for bad input the user can fix; entry points print it on one line."""


class ConfigError(ValueError):
    """Bad input (a missing file, a wrong key, an incompatible checkpoint, an empty data set)."""
