"""The repository speaks of the project, not of how it was built."""
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCOPE = ("README.md", "docs", "benchmarks", "refnorm", "tests", "derivations")
SKIP_DIRS = {".venv", ".ci-venv", "__pycache__", ".git", ".hypothesis", ".pytest_cache"}
TEXT_SUFFIXES = {".md", ".py", ".txt", ".rst", ".tex", ".toml", ".cfg", ".ini", ".yml", ".yaml",
                 ".json", ".sh", ""}

ORDINAL = (r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|"
           r"twelfth|thirteenth|fourteenth|fifteenth|\d+(?:st|nd|rd|th))")
# A sitting of the work, numbered or pointed at ("the ninth ...", "since the last ...").
NUMBERED_SITTING = re.compile(
    rf"\b{ORDINAL}\s+(?:work\s+)?(?:session|sitting)s?\b"
    r"|\b(?:this|that|last|previous|earlier|later|next|each|every)\s+(?:session|sitting)s?\b",
    re.I)
# The word itself, wherever it is not the name of an API or of pytest's test session.
SESSION_WORD = re.compile(r"\bsessions?\b", re.I)
API_SESSION = re.compile(
    r"InferenceSession|\bsession\.run\b|\btf(?:\.compat\.v1)?\.Session\b|Session\(|"
    r"scope=[\"']session[\"']|\btest[- ]session\b|\bsession[- ]scoped?\b|\bsession\s*=\s*ort\.",
    re.I)
ISO_DATE = re.compile(r"\b20\d\d-[01]\d(?:-[0-3]\d)?\b")
RUN_DATE = re.compile(r"\bruns? of 20\d\d-[01]\d-[0-3]\d\b", re.I)


def tracked_text_files():
    """The text files under SCOPE: git's list where there is a checkout (CI runs in a git
    clone), else a walk of the tree that skips virtual environments and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *SCOPE], cwd=ROOT, check=True,
                             capture_output=True).stdout.decode()
        paths = [p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for top in SCOPE:
            if (ROOT / top).is_file():
                paths.append(top)
                continue
            for dirpath, dirnames, filenames in os.walk(ROOT / top):
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
                paths += [str((pathlib.Path(dirpath) / f).relative_to(ROOT)) for f in filenames]
    for rel in sorted(paths):
        path = ROOT / rel
        if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            yield rel.replace(os.sep, "/"), path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def narration(rel, text):
    """The lines of one file that number, point at or date the work that produced them."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if NUMBERED_SITTING.search(line) or (SESSION_WORD.search(line)
                                             and not API_SESSION.search(line)):
            found.append(f"{rel}:{n}: {line.strip()[:120]}")
        elif len(ISO_DATE.findall(line)) > len(RUN_DATE.findall(line)):
            found.append(f"{rel}:{n}: a date that is not a recorded run's: {line.strip()[:100]}")
    return found


def test_no_history_of_the_work():
    """Nothing in the repository numbers, points at or dates the sittings of work that produced
    it; the history is git's. README.md, docs/, benchmarks/, refnorm/, tests/ and derivations/
    speak of the project as it is now:

    * no sitting of the work by number or pointer: an ordinal ("ninth", "10th") or a pointer
      ("this", "last", "previous", "each", ...) before the word for a sitting of work, or that
      word on its own, unless the line names an API that uses it (onnxruntime's
      InferenceSession, TF1's session.run / tf.Session, pytest's session scope);
    * no dates but those of recorded benchmark runs (benchmarks/RESULTS.md, and where the README
      cites them), written "run of YYYY-MM-DD" or "runs of YYYY-MM-DD".

    This file is not scanned: its patterns and this docstring spell out the words they forbid.
    """
    here = pathlib.Path(__file__).resolve().relative_to(ROOT).as_posix()
    found = [hit for rel, text in tracked_text_files() if rel != here
             for hit in narration(rel, text)]
    assert not found, "the repository narrates its own making:\n" + "\n".join(found)


def test_the_rule_catches_narration_and_spares_api_words():
    """The patterns above on lines they must flag and lines they must leave alone."""
    word = "sess" + "ion"
    flagged = [f"two runs of the tenth {word}", f"since the 7th {word}", f"as in the last {word}",
               f"measured this {word}", f"a {word} of work", "first run on 2026-11-26"]
    spared = [f"ort.Inference{word.title()}(model)", f"tf1 {word}.run(fetches)",
              f'@pytest.fixture(scope="{word}")', f"Test-{word} set-up", "the first call <= 1 s",
              "a tenth of the work's share"]
    assert all(narration("x.py", line) for line in flagged)
    assert not any(narration("x.py", line) for line in spared)
    assert not narration("x.md", "### Run of 2026-11-26 (runs A and B)")
    assert not narration("x.md", "the latest runs recorded, two runs of 2026-11-26")
    assert narration("x.md", "faster since 2026-11-25")
    assert narration("x.md", "a run of 2026-11-26 and the fix of 2026-11-27")


CLOCKS = re.compile(r"\b(perf_counter|monotonic|process_time|timeit)\b|\btime\.time\(")


def test_no_test_reads_a_clock():
    """A test that passes alone and fails on a busy machine is a broken test: timings live in
    benchmarks/. (Sleeping while waiting for another process is not reading a clock.)"""
    found = [f"{path.name}:{n}" for path in sorted((ROOT / "tests").glob("*.py"))
             if path.name != "test_repository.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if CLOCKS.search(line)]
    assert not found, found
    assert CLOCKS.search("t = time.perf_counter()") and CLOCKS.search("time.time()")
