"""A trivial cached Numba function: bench_cpu.py calls it first in a fresh process to time
Numba's own start-up (its typing and target registries, loaded at the first compile or cache
load of any function), apart from what refnorm adds."""
from numba import njit


@njit(cache=True)
def probe(x):
    return x + 1.0
