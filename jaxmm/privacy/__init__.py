"""Differential privacy: noise mechanisms, DP-NTK regression (2407.13621), the DPTree family and DP
cross-attention (2407.14717). Names resolve lazily."""
import importlib

_EXPORTS = {
    "truncated_laplace": "mechanisms", "truncated_laplace_bound": "mechanisms",
    "gaussian_sampling_mechanism": "gaussian", "gaussian_sampling_mechanism_factor": "gaussian",
    "samples_for_budget": "gaussian", "epsilon_for_samples": "gaussian",
    "samples_for_epsilon": "gaussian", "gaussian_sampling_epsilon": "gaussian", "gaussian_sampling_rdp": "gaussian",
    "entry_sensitivity": "ntk_regression", "clip_rows": "ntk_regression",
    "nothing_released": "dp_ntk", "check_paper_assumptions": "dp_ntk", "frobenius_sensitivity": "dp_ntk",
    "bounded_eta": "dp_ntk", "clip_counts": "cross_attention", "clip_count": "dp_tree",
    "quadratic_ntk": "ntk_regression", "quadratic_ntk_limit": "ntk_regression", "ntk_features": "ntk_regression",
    "ridge_fit": "ntk_regression", "ntk_predict": "ntk_regression",
    "fit_predict": "dp_ntk", "privatize_features": "dp_ntk", "save_privacy_report": "dp_ntk",
    "DPTree": "dp_tree", "DPTreeDistance": "dp_tree", "DPTreeHighDim": "dp_tree", "DPTreeSoftmax": "dp_tree",
    "dp_cross_attention_init": "cross_attention", "dp_cross_attention": "cross_attention",
    "exact_cross_attention": "cross_attention", "clipping_report": "cross_attention",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxmm.privacy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxmm.privacy' has no attribute {name!r}")
