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
