"""Every equation tag the code cites is defined in derivations/, exactly once."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
TAG = re.compile(r"\((BPTT|BN|LN|LSTM|BN-LSTM|SEQBN-LSTM|LN-LSTM|RNN|BN-RNN|SEQBN-RNN|LN-RNN|"
                 r"GRU|BN-GRU|SEQBN-GRU|LN-GRU|VAR|STACK) (\d+[a-z]?)\)")
REQUIRED = ["README.md", "notation.md", "bptt.md", "batch_norm.md", "layer_norm.md", "lstm.md",
            "bn_lstm.md", "seq_bn_lstm.md", "ln_lstm.md", "variants.md",
            "rnn.md", "bn_rnn.md", "seq_bn_rnn.md", "ln_rnn.md",
            "gru.md", "bn_gru.md", "seq_bn_gru.md", "ln_gru.md", "stack.md"]


def defined_tags():
    """Tags that end a line of a derivation: that line is the equation they name."""
    found = {}
    for path in sorted((ROOT / "derivations").glob("*.md")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = TAG.search(line.rstrip().rstrip("`").rstrip())
            if m and line.rstrip().rstrip("`").rstrip().endswith(m.group(0)):
                found.setdefault(m.group(0), []).append(f"{path.name}:{number}")
    return found


def cited_tags():
    cited = {}
    for path in sorted((ROOT / "refnorm").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in TAG.finditer(line):
                cited.setdefault(m.group(0), []).append(f"{path.relative_to(ROOT)}:{number}")
    return cited


def test_every_derivation_file_exists():
    missing = [name for name in REQUIRED if not (ROOT / "derivations" / name).is_file()]
    assert not missing


def test_every_cited_tag_is_defined():
    defined = defined_tags()
    missing = {tag: where for tag, where in cited_tags().items() if tag not in defined}
    assert not missing, f"tags cited in code but not defined in derivations/: {missing}"


def test_every_tag_is_defined_once():
    twice = {tag: where for tag, where in defined_tags().items() if len(where) > 1}
    assert not twice


def test_the_code_cites_every_backward_of_every_cell():
    """Each cell module cites its own forward and backward tags (a backward line that lost its
    tag would show up here)."""
    cited = cited_tags()
    for prefix, last in [("LSTM", 10), ("BN-LSTM", 11), ("SEQBN-LSTM", 6), ("LN-LSTM", 10),
                         ("RNN", 6), ("BN-RNN", 9), ("SEQBN-RNN", 5), ("LN-RNN", 8),
                         ("GRU", 13), ("BN-GRU", 8), ("SEQBN-GRU", 5), ("LN-GRU", 7),
                         ("BN", 11), ("LN", 8), ("BPTT", 9), ("STACK", 16)]:
        for k in range(1, last + 1):
            assert f"({prefix} {k})" in cited, f"({prefix} {k}) is not cited in refnorm/"
