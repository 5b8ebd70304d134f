"""Parameter validation in scikit-learn's style, on public APIs only.

scikit-learn validates its parameters with ``sklearn.utils._param_validation``
and ``sklearn.base._fit_context``, both private and changing between
releases. This module holds the small part of it that sktransfer needs:
``_parameter_constraints`` lists, per parameter, what is valid (``None``, a
type, :class:`Interval`, :class:`Options`, :class:`HasMethods`,
``"boolean"``, ``"random_state"`` or ``"verbose"``); :func:`validate_params`
checks an estimator's parameters against them at the start of ``fit``.
"""

import math
from numbers import Integral

import numpy as np


class InvalidParameterError(ValueError, TypeError):
    """A parameter's value is outside its constraints.

    A ``ValueError`` and a ``TypeError``, like scikit-learn's own.
    """


def _is_number(value, kind):
    return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))


class Interval:
    """Numbers of ``kind`` (``Integral`` or ``Real``) between ``left`` and
    ``right`` (``None``: unbounded); ``closed`` in {"left", "right", "both",
    "neither"} says which ends belong to it."""

    def __init__(self, kind, left, right, *, closed):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value):
        if not _is_number(value, self.kind) or (isinstance(value, float) and math.isnan(value)):
            return False
        left_in = self.closed in ("left", "both")
        right_in = self.closed in ("right", "both")
        if self.left is not None and (value < self.left or (value == self.left and not left_in)):
            return False
        if self.right is not None:
            return value < self.right or (value == self.right and right_in)
        return True

    def __str__(self):
        kind = "an int" if self.kind is Integral else "a float"
        left = "-inf" if self.left is None else self.left
        right = "inf" if self.right is None else self.right
        brackets = {"left": "[)", "right": "(]", "both": "[]", "neither": "()"}[self.closed]
        if self.left is None:
            brackets = "(" + brackets[1]
        if self.right is None:
            brackets = brackets[0] + ")"
        return f"{kind} in the range {brackets[0]}{left}, {right}{brackets[1]}"


class Options:
    """One of a set of strings."""

    def __init__(self, options):
        self.options = set(options)

    def is_satisfied_by(self, value):
        return isinstance(value, str) and value in self.options

    def __str__(self):
        return f"a str among {sorted(self.options)}"


class BackboneName:
    """A name that a backbone family knows: listed, or with a family's prefix."""

    def is_satisfied_by(self, value):
        from .backbones import is_backbone_name

        return is_backbone_name(value)

    def __str__(self):
        from .backbones import NAMED_FAMILIES, list_backbones

        prefixes = [f.PREFIX for f in NAMED_FAMILIES if getattr(f, "PREFIX", None)]
        starting = "".join(f" or a str starting with {p!r}" for p in prefixes)
        return f"a str among {list_backbones()}{starting}"


class HasMethods:
    """An object with every one of ``methods``."""

    def __init__(self, methods):
        self.methods = list(methods)

    def is_satisfied_by(self, value):
        return all(callable(getattr(value, name, None)) for name in self.methods)

    def __str__(self):
        return f"an object implementing {', '.join(repr(m) for m in self.methods)}"


class _InstanceOf:
    def __init__(self, kind):
        self.kind = kind

    def is_satisfied_by(self, value):
        return isinstance(value, self.kind)

    def __str__(self):
        module = self.kind.__module__
        name = self.kind.__qualname__
        return f"a {name}" if module == "builtins" else f"an instance of {module}.{name}"


class _NoneValue:
    def is_satisfied_by(self, value):
        return value is None

    def __str__(self):
        return "None"


class _Any:
    def __init__(self, constraints, text):
        self.constraints, self.text = constraints, text

    def is_satisfied_by(self, value):
        return any(c.is_satisfied_by(value) for c in self.constraints)

    def __str__(self):
        return self.text


_NAMED = {
    "boolean": _Any([_InstanceOf(bool), _InstanceOf(np.bool_)], "a bool"),
    "random_state": _Any(
        [
            _NoneValue(),
            Interval(Integral, 0, 2**32 - 1, closed="both"),
            _InstanceOf(np.random.RandomState),
        ],
        "None, an int in the range [0, 2**32 - 1] or a numpy RandomState",
    ),
    "verbose": _Any(
        [Interval(Integral, 0, None, closed="left"), _InstanceOf(bool), _InstanceOf(np.bool_)],
        "an int in the range [0, inf) or a bool",
    ),
}


def _as_constraint(constraint):
    if constraint is None:
        return _NoneValue()
    if isinstance(constraint, str):
        return _NAMED[constraint]
    if isinstance(constraint, type):
        return _InstanceOf(constraint)
    return constraint


def validate_params(estimator):
    """Check every parameter of ``estimator`` against ``_parameter_constraints``.

    Raises
    ------
    InvalidParameterError
        For the first parameter whose value meets none of its constraints;
        the message names the parameter, what is valid and the value.
    """
    for name, value in estimator.get_params(deep=False).items():
        constraints = [_as_constraint(c) for c in estimator._parameter_constraints[name]]
        if not any(c.is_satisfied_by(value) for c in constraints):
            valid = [str(c) for c in constraints]
            valid = valid[0] if len(valid) == 1 else ", ".join(valid[:-1]) + " or " + valid[-1]
            raise InvalidParameterError(
                f"The {name!r} parameter of {type(estimator).__name__} must be {valid}. "
                f"Got {value!r} instead."
            )
