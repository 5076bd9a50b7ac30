"""The one exception type for bad input the user can fix; entry points print it on one line."""


class ConfigError(ValueError):
    """Bad input (a missing file, a wrong key, an incompatible checkpoint, an empty data set)."""


def config_error_inside(err: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` that ``err`` is or was raised from, if any: a resolver's error
    (``${ptft.num_classes:}``) reaches its caller wrapped in OmegaConf's (and Hydra's)."""
    seen: set[int] = set()
    error: BaseException | None = err
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
