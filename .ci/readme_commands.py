"""Print the README's two commands ("## Two commands"), one a line, exactly as written: .ci/run
runs each with bash, which reads the trailing `# ...` as a comment. tests/test_readme.py checks
that there are exactly two, so a README edit cannot leave CI running nothing."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def commands(text):
    block = re.search(r"^## Two commands\n.*?```bash\n(.*?)```", text, re.S | re.M)
    if block is None:
        raise SystemExit("README.md has no '## Two commands' section with a bash block")
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


if __name__ == "__main__":
    print("\n".join(commands(README.read_text())))
