"""The README's config reference is the code's: regenerate with `loraclf config --reference`."""

from conftest import REPO
from loraclf.config import reference


def test_readme_config_reference_is_current():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end].strip() == reference().strip(), "run: loraclf config --reference, paste into README.md"


def test_quickstart_and_ci_use_make():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_example_configs_are_valid():
    from loraclf.config import load_config

    for f in (REPO / "examples").glob("*.yaml"):
        load_config(f)
