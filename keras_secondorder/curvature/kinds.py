"""The registry of curvature kinds: the one place that knows which curvature matrices exist.

A kind is a name, an operator class and a dense reference. The operator class (a
`CurvatureOperator` subclass) carries the rest: its `batch_product` `(objective, batch, vector)
-> list`, whether it is `positive_semidefinite`, and whether it `splits_at_outputs` (needs a loss
with a Gauss-Newton split). `BatchCurvature.product`, `spectrum.exact_eigenvalues`, the
`HessianSpectrum` and `PowerMethodLR` callbacks and `HessianFree` look kinds up here by name,
and an unknown name gets one error that lists the registered kinds.

Adding a kind is one new module in `curvature/`: its batch product, its operator class and its
dense reference, ending in `kinds.register("name", Operator, dense_reference)`, and an import of
that module in `curvature/__init__.py`; its tests join the grid of `tests/curvature/
test_products.py`, which compares every registered kind with its dense reference.
"""

import collections

CurvatureKind = collections.namedtuple("CurvatureKind", ["name", "operator", "dense"])
CurvatureKind.__doc__ = """A registered curvature kind.

Attributes:
    name: the name users pass as `curvature=`.
    operator: its `CurvatureOperator` subclass (with `batch_product`, `positive_semidefinite`
        and `splits_at_outputs`).
    dense: its dense reference, `(model, x, y, sample_weight, **kwargs) -> (P, P)` tensor.
"""

_KINDS = {}


def register(name, operator, dense):
    """Registers the curvature kind `name`; returns its `CurvatureKind`.

    Raises:
        ValueError: `name` is registered already.
    """
    if name in _KINDS:
        raise ValueError(f"A curvature kind named {name!r} is registered already "
                         f"({_KINDS[name].operator.__name__}); choose another name.")
    _KINDS[name] = CurvatureKind(name, operator, dense)
    return _KINDS[name]


def names():
    """The registered kinds' names, in registration order."""
    return tuple(_KINDS)


def get(name, parameter="curvature", allowed=None):
    """The `CurvatureKind` named `name`.

    Args:
        name: the kind's name.
        parameter: the argument it was given as, for the error message.
        allowed: the names the caller takes, when it takes only some kinds. Defaults to
            `None`: every registered kind.

    Raises:
        ValueError: `name` is not registered (or not among `allowed`); the message lists them.
    """
    choices = names() if allowed is None else tuple(allowed)
    if name not in choices or name not in _KINDS:
        also = "" if allowed is None else f" (registered kinds: {', '.join(names())})"
        raise ValueError(f"`{parameter}` must be one of {list(choices)}{also}; received "
                         f"{name!r}.")
    return _KINDS[name]
