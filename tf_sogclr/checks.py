"""Argument checks with one message style: `<name> must be <accepted>, got <value>.`

Every module of the library checks its arguments with these, before any TensorFlow work, so
a bad value fails in milliseconds with a message naming it. Configs name their fields as the
command line does (`flag("gamma")` is "--gamma"); library functions name their arguments.
"""

import numbers


def flag(name):
    """The command-line spelling of config field `name`: "--name"."""
    return f"--{name}"


def fail(name, accepted, value):
    """Raises `ValueError("<name> must be <accepted>, got <value!r>.")`."""
    raise ValueError(f"{name} must be {accepted}, got {value!r}.")


def is_integer(value):
    """True for ints (NumPy's included), False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name, value, allow_zero=False):
    """`value` is an integer >= 1 (>= 0 with `allow_zero`)."""
    if not is_integer(value) or value < (0 if allow_zero else 1):
        fail(name, "an integer >= 0" if allow_zero else "an integer >= 1", value)


def choice(name, value, choices):
    """`value` is one of `choices`."""
    if value not in choices:
        fail(name, f"one of {', '.join(map(str, choices))}", value)


def in_range(name, value, low, high, low_open=False, high_open=False):
    """`value` is a number in [low, high], with open ends where asked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        too_low = too_high = True
    else:
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        fail(name, f"a number in {interval}", value)


def boolean(name, value):
    """`value` is True or False (not merely truthy)."""
    if not isinstance(value, bool):
        fail(name, "True or False", value)
