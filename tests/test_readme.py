"""The README's Python example runs as written (on the bundled model, offline)."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_block_after(heading):
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves "my-model" into the current folder
    exec(compile(python_block_after("## Python API"), "README.md", "exec"), {})
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert "gradients" in capsys.readouterr().out
