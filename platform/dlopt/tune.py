"""`dlopt.tune`: the search domains a spec field may hold (public name; see dlopt.spec.tune)."""
from dlopt.spec.tune import (
                             Choice,
                             Domain,
                             Grid,
                             LogUniform,
                             RandInt,
                             Uniform,
                             choice,
                             grid,
                             grid_search,
                             loguniform,
                             randint,
                             uniform,
)

__all__ = ["choice", "grid", "grid_search", "uniform", "loguniform", "randint", "Choice", "Grid",
           "Uniform", "LogUniform", "RandInt", "Domain"]
