"""Size of the ``vqtok/`` package at git revisions: code tokens, lines and files, side by side.

Code tokens are Python ``tokenize`` tokens without comments, newlines and indentation (a docstring
is one token), so re-wrapping or re-formatting code does not change them; lines do.

    python benchmarks/package_size.py 5b1f861 HEAD            # one row per revision
    python benchmarks/package_size.py 5b1f861 HEAD --files    # and the per-file change, first -> last
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tokenize

_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT, tokenize.ENDMARKER}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def measure(rev: str, folder: str = "vqtok") -> dict[str, tuple[int, int]]:
    """{path: (code tokens, lines)} of every .py file under ``folder`` at ``rev``."""
    out = {}
    for path in _git("ls-tree", "-r", "--name-only", rev, folder).split():
        if path.endswith(".py"):
            src = _git("show", f"{rev}:{path}")
            tokens = sum(t.type not in _SKIP for t in tokenize.generate_tokens(io.StringIO(src).readline))
            out[path] = (tokens, src.count("\n"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="git revisions (the first is the base of the change columns)")
    parser.add_argument("--files", action="store_true", help="per-file change from the first to the last revision")
    args = parser.parse_args()
    try:
        sizes = [measure(rev) for rev in args.revs]
    except subprocess.CalledProcessError as err:
        parser.error(f"git: {err.stderr.strip()}")
    base_tokens = sum(t for t, _ in sizes[0].values())
    print(f"| revision | code tokens | vs {args.revs[0]} | lines | files |\n|---|---:|---:|---:|---:|")
    for rev, size in zip(args.revs, sizes):
        tokens, lines = sum(t for t, _ in size.values()), sum(n for _, n in size.values())
        print(f"| {rev} | {tokens} | {tokens / base_tokens:.3f}x | {lines} | {len(size)} |")
    if args.files:
        first, last = sizes[0], sizes[-1]
        rows = [(last.get(p, (0, 0))[0] - first.get(p, (0, 0))[0], p) for p in sorted(set(first) | set(last))]
        print(f"\n| file | code tokens {args.revs[0]} -> {args.revs[-1]} |\n|---|---:|")
        for change, path in sorted(rows, key=lambda r: -abs(r[0])):
            if change:
                print(f"| {path} | {change:+d} |")


if __name__ == "__main__":
    main()
