"""Test set-up: CPU with 8 virtual devices (multi-device tests), deterministic, no GPU needed."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8) if hasattr(jax.config, "jax_num_cpu_devices") else None
