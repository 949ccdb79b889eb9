"""Real English sentences from three unrelated sources on this machine, for judging sentence embedders on text
unlike their calibration data (no download): the Python documentation's topics (``pydoc_data``, shipped with
CPython), scikit-learn's data set descriptions, and the descriptions of the installed packages (their
``METADATA``). Calibration sentences come from the Python documentation, test sentences from the other two.

    python tools/real_sentences.py OUT_DIR [--calib 640] [--test 512]

writes ``real_calib.txt`` and ``real_test.txt`` (one sentence a line) and ``real_sentences.json`` (sources,
counts, sha256).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"[`*_|#<>\[\]{}=\\]|::|\.\.|https?://|www\.|\$ |>>>|\(\)")


def sentences(text: str) -> list[str]:
    """Prose sentences of a text: 6 to 40 words, mostly letters, no markup, code or links."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in _SPLIT.split(flat):
            words = sentence.split()
            letters = sum(c.isalpha() for c in sentence)
            if (6 <= len(words) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?"
                    and letters >= 0.75 * len(sentence.replace(" ", "")) and not _MARKUP.search(sentence)):
                found.append(sentence)
    return found


def python_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [s for name in sorted(topics) for s in sentences(topics[name])]


def sklearn_descriptions() -> list[str]:
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    return [s for path in sorted(folder.glob("*.rst")) for s in sentences(path.read_text(encoding="utf-8"))]


def package_descriptions() -> list[str]:
    found = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "*.dist-info", "METADATA"))):
        body = Path(path).read_text(encoding="utf-8", errors="replace").split("\n\n", 1)
        if len(body) == 2:
            found += sentences(body[1])
    return found


def write(folder: Path, calib: int, test: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pools = {"python docs": python_docs(), "scikit-learn data set descriptions": sklearn_descriptions(),
             "installed packages' descriptions": package_descriptions()}
    unique = {name: list(dict.fromkeys(pool)) for name, pool in pools.items()}
    calib_pool = unique["python docs"]
    test_pool = [s for name in list(unique)[1:] for s in unique[name] if s not in set(calib_pool)]
    chosen_calib = [calib_pool[i] for i in sorted(rng.choice(len(calib_pool), min(calib, len(calib_pool)), replace=False))]
    chosen_test = [test_pool[i] for i in sorted(rng.choice(len(test_pool), min(test, len(test_pool)), replace=False))]
    folder.mkdir(parents=True, exist_ok=True)
    facts = {"sources": {name: len(pool) for name, pool in unique.items()}, "python": sys.version.split()[0]}
    for name, lines in (("real_calib.txt", chosen_calib), ("real_test.txt", chosen_test)):
        text = "\n".join(lines) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
        facts[name] = {"sentences": len(lines), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (folder / "real_sentences.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--calib", type=int, default=640)
    parser.add_argument("--test", type=int, default=512)
    args = parser.parse_args(argv)
    print(json.dumps(write(args.folder, args.calib, args.test), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
