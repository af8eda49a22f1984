"""The README's quickstart runs as written and stays ten lines."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    grads, cell = scope["grads"], scope["cell"]
    assert set(grads) == set(cell.params) | {"x", "h0", "c0"}
    assert np.all(np.isfinite(scope["hs_eval"]))
    assert "Wx" in capsys.readouterr().out


def test_stack_example_runs():
    code = re.search(r"### Stacked and bidirectional networks\n\n```python\n(.*?)```",
                     README.read_text(), re.S).group(1)
    scope = {}
    exec(compile(code, "README stack example", "exec"), scope)
    net, grads, ys = scope["net"], scope["grads"], scope["ys"]
    assert set(grads) == set(net.params) | {"x", "h0", "c0"}
    assert ys.shape == (6, 2, 8) and scope["hT"].shape == (4, 2, 4)


def test_ci_runs_the_two_commands():
    """.ci/run runs the README's two commands literally and in order: the study, then the test
    suite. The parser it uses finds exactly those two lines."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_commands",
                                                  README.parent / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first, second = module.commands(README.read_text())
    assert "refnorm study" in first and first.startswith("pip install")
    assert "python -m pytest" in second and second.startswith("pip install")
