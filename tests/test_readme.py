"""The README's Python example runs as written."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example(monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["pred"].coverage.fraction == 1.0
    assert scope["graph"].to_data().num_nodes == len(scope["graph"])


def test_readme_commands_exist():
    text = (ROOT / "README.md").read_text()
    for script in re.findall(r"bash (scripts/\w+\.sh)", text):
        assert (ROOT / script).exists(), script
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
