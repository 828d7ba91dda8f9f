"""The README's Python examples run as written (training shortened to one epoch)."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_python_examples_run(tmp_path, monkeypatch):
    if not os.path.exists(README):
        pytest.skip("README.md not beside the tests")
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    code = "\n".join(blocks).replace("epochs=6", "epochs=1")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "model.npz").exists()
