"""The training runtime: objectives, samplers, AIS, data, the training loop, reports."""

import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    """`energydsl.train(...)` is the public API's training function (energydsl.api.train);
    once this package is imported it is also the attribute `energydsl.train`, so the
    package answers the call itself."""

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        from energydsl.api import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage

