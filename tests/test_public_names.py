"""Issue 12.4: every name a package exports stays the documented callable, whatever else was imported.

Importing a submodule sets the package attribute of that name, so a public function that shares its name with
a submodule turns into the module in any program that imports the submodule (as jaxmm.nn does)."""
import importlib
import pkgutil

import pytest

import jaxmm

PACKAGES = ["jaxmm.ops", "jaxmm.attention", "jaxmm.privacy", "jaxmm.nn", "jaxmm.data", "jaxmm.hf", "jaxmm.models", "jaxmm.tuning",
            "jaxmm.kernels", "jaxmm.ocr", "jaxmm.metrics", "jaxmm.diffusion"]


def _import_everything():
    import train  # noqa: F401
    import train.tasks  # noqa: F401
    for pkg in (jaxmm,):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_names_are_callables_not_submodules(package):
    _import_everything()
    pkg = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(pkg.__path__)}
    exported = getattr(pkg, "__all__", [])
    clash = sorted(set(exported) & submodules)
    assert not clash, f"{package} exports {clash}, which are also submodule names"
    for name in exported:
        obj = getattr(pkg, name)
        assert callable(obj) or isinstance(obj, (tuple, dict, frozenset)), f"{package}.{name} is {obj!r}"
        assert not isinstance(obj, type(pkgutil)), f"{package}.{name} is a module"


def test_documented_ntk_call_works_after_importing_nn():
    import jax.numpy as jnp
    import numpy as np

    import jaxmm.nn  # noqa: F401  (imported jaxmm.ops.ntk_attention as a module before the fix)
    from jaxmm import ops

    q = jnp.ones((1, 4, 2, 8))
    out = ops.ntk_attention(q, q, q, jnp.zeros((2, 8, 8)), jnp.zeros((2, 8)))
    np.testing.assert_allclose(out, ops.dot_product_attention(q, q, q), atol=1e-6)
