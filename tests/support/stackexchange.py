"""Stack Exchange dumps as the tests write them: Posts.xml rows, and prose long enough for the filters."""
from xml.sax.saxutils import quoteattr

SENTENCE = "Water boils when its vapour pressure reaches the pressure of the air around it. "


def prose(chars: int) -> str:
    return (SENTENCE * (chars // len(SENTENCE) + 1))[:chars].strip()


def row(**attrs) -> str:
    return "  <row " + " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs.items()) + " />\n"


def posts_xml(rows: list[str]) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(rows) + "</posts>\n"
