"""Token reducers: the one home for every reduction rule (see reducers/base.py)."""

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.random_drop import RandomDrop
from tokcomp.reducers.tome import ToMe

__all__ = ["Reducer", "RandomDrop", "ToMe"]
