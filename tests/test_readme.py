"""The README's import example must keep working."""
import pathlib
import re


def test_readme_example_runs():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert text.lstrip().startswith("# jaxmm") and "make test" in text.split("```")[1] and "make demo" in text.split("```")[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["params"]["params"]
