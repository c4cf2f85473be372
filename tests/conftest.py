"""Test set-up: CPU with 8 virtual devices (multi-device tests), deterministic, no GPU needed."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8) if hasattr(jax.config, "jax_num_cpu_devices") else None


def pytest_configure(config):
    """The default run (slow tests deselected) compiles at XLA's backend optimisation level 0, unless XLA_FLAGS
    names a level: at test sizes nearly all of its CPU time is XLA compiling, most of it LLVM optimising code that
    then runs for milliseconds. Same HLO programs and code paths; only the machine code is less optimised. Measured on
    this suite's slowest test (test_commit_sharding's snapshot test): 165 -> 100 user CPU-s. Slow tests (`-m slow`)
    keep the default level: they train for hundreds of steps, and a level-0 Toffee UNet step runs 1.56x longer
    (0.58 against 0.37 s). tests/test_notebooks.py sets the same level for the notebook kernels. Runs before any test
    module is collected, so before JAX creates its CPU backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "not slow" in (config.option.markexpr or "") and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
