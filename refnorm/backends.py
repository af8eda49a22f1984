"""Backend registry: a backend is a package exporting `<stem>_forward` / `<stem>_backward` for
every cell stem, with the same signatures and cache classes' fields as refnorm.numpy_ref."""
import importlib

BACKENDS = {
    "numpy": "refnorm.numpy_ref",     # the book: readable, never optimised
    "numba": "refnorm.numba_cpu",     # the same math, step loops compiled by Numba
    "cuda": "refnorm.numba_cuda",     # the same math as Numba-CUDA kernels, sequences on the GPU
}


def get(name):
    """The backend module for `name`; ValueError for an unknown name, ImportError (with the
    reason) for a known backend whose dependencies are missing."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return importlib.import_module(BACKENDS[name])


def available():
    """Names of the backends that can run here: they import, and their `usable()` (a backend
    that needs hardware, like "cuda", defines one) says yes."""
    names = []
    for name in BACKENDS:
        try:
            module = get(name)
        except ImportError:
            continue
        if getattr(module, "usable", lambda: True)():
            names.append(name)
    return names
