"""jaxmm.tuning: submodules load on first use (`jaxmm.tuning.<name>`)."""
from jaxmm import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
