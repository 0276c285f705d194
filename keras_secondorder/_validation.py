"""Checks of settings, with errors that name the parameter, the value received and what fits."""


def positive_int(value, name):
    """`value` if it is a positive integer, else a ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {value!r}.")
    return value


def one_of(value, name, choices):
    """`value` if it is one of `choices`, else a ValueError naming `name` and listing them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; received {value!r}.")
    return value


def number(value, name, accepts, description):
    """`float(value)` if it is a real number that `accepts`, else a ValueError naming `name`.

    `description` completes "must be a number ...", e.g. `">= 0"` or `"in (0, 1]"`.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not accepts(value):
        raise ValueError(f"`{name}` must be a number {description}; received {value!r}.")
    return float(value)


def integer(value, name):
    """`value` if it is an integer (any sign), else a ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"`{name}` must be an integer; received {value!r}.")
    return value
