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


def _readme():
    return (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _commands(text):
    """Every `python -m train --config X --workdir Y` in the README, as (name, variant)."""
    found = re.findall(r"python -m train --config ([a-z_]\w*(?::\w+)?) --workdir [^\s`]+", text)  # not <name>
    assert found, "no `python -m train --config ... --workdir ...` command in README.md"
    return [(spec.partition(":")[0], spec.partition(":")[2] or None) for spec in found]


def test_readme_commands_name_shipped_configs_variants_and_tasks():
    """Each command's config exists, accepts its variant and names a registered task; every shipped config is shown."""
    import importlib.util

    from train import tasks
    from train.main import config_names, config_path

    commands = _commands(_readme())
    for name, variant in set(commands):
        path = config_path(name).partition(":")[0]
        spec = importlib.util.spec_from_file_location(f"_readme_config_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(variant)  # an unknown variant raises here
        assert tasks.get(config.task), (name, variant, config.task)
    assert set(config_names()) == {name for name, _ in commands}, "a shipped config has no command in README.md"


def test_readme_papers_table_and_links():
    """Ten rows, in PAPERS.md's order of arXiv ids; a row with no command says "not yet"; every local link exists."""
    text = _readme()
    rows = [line for line in text.split("## The ten papers", 1)[1].split("\n## ", 1)[0].splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, 11))
    arxiv = [re.search(r"arxiv\.org/abs/(\d{4}\.\d{5})", r).group(1) for r in rows]
    assert arxiv == ["2407.20454", "2407.19185", "2407.14717", "2407.13621", "2406.14036", "2406.12044",
                     "2406.09305", "2406.08354", "2406.06730", "2405.16411"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        has_command = "python -m train --config" in cells[3]
        assert has_command or cells[3] == "not yet", row
        assert has_command == ("](docs/" in cells[4]), f"a command needs a results link and vice versa: {row}"
    root = pathlib.Path(__file__).parents[1]
    links = re.findall(r"\]\((?!https?:)([^)#]+)", text)
    assert links and all((root / link).exists() for link in links), [l for l in links if not (root / l).exists()]
