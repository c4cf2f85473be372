"""Issue 13.7: a bare `import jaxmm` reaches every subpackage and module, and carries a version."""
import subprocess
import sys


def test_bare_import_reaches_submodules_and_version():
    code = ("import jaxmm, re; "
            "assert re.match(r'\\d+\\.\\d+', jaxmm.__version__), jaxmm.__version__; "
            "assert callable(jaxmm.models.llm.LLM); "
            "assert callable(jaxmm.ops.dot_product_attention); "
            "assert callable(jaxmm.tuning.commit.kl_divergence); "
            "assert 'models' in dir(jaxmm)\n"
            ""
            "try:\n    jaxmm.nonexistent\nexcept AttributeError as e:\n    assert 'nonexistent' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu",
                       "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
