"""Text rules shared by the sources: HTML to text, the paper's style filters, prompt keys and n-grams.

HTML (Stack Exchange bodies) becomes plain text the way LIMA describes (§2.1): links, images and
other tags are removed, code blocks and lists are kept. Concretely: a `<pre>` block becomes a ```
fenced block, inline `<code>` keeps its backticks, list items become `- item` / `1. item` lines
(nested lists indented two spaces), a link keeps its words but not its address (a link whose words
are an address goes entirely), images, scripts and styles go with their content, and every other tag
is dropped with its text kept. Paragraphs are separated by a blank line.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

_BLOCKS = {"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "tr", "dl", "dd", "dt"}
_SKIPPED = {"script", "style", "img", "svg", "video", "audio", "iframe"}  # removed with whatever they hold
_URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*://|www\.)\S*\s*$", re.I)
_BREAK = "\x00"  # a <br> inside a paragraph: survives whitespace collapsing, becomes a newline


class _Cleaner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []  # (kind, text); kind "li" blocks join with one newline
        self.inline: list[str] = []
        self.lists: list[list] = []  # per open list: [ordered, next number]
        self.marker: str | None = None  # the pending "- " / "3. " of a list item not yet written
        self.pre: list[str] | None = None
        self.skip = 0
        self.link_start: list[int] = []

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.inline)).replace(f" {_BREAK} ", "\n")
        text = text.replace(_BREAK, "\n").strip()
        self.inline = []
        if not text:
            return
        if self.lists:
            indent = "  " * (len(self.lists) - 1)
            prefix = indent + (self.marker if self.marker is not None else "  ")
            self.marker = None
            self.blocks.append(("li", prefix + text.replace("\n", "\n" + " " * len(prefix))))
        else:
            self.blocks.append(("p", text))

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIPPED:
            self.skip += tag != "img"  # <img> has no end tag
            return
        if self.skip:
            return
        if self.pre is not None:
            if tag == "br":
                self.pre.append("\n")
            return
        if tag == "pre":
            self.flush()
            self.pre = []
        elif tag == "code":
            self.inline.append("`")
        elif tag == "br":
            self.inline.append(f" {_BREAK} ")
        elif tag == "a":
            self.link_start.append(len(self.inline))
        elif tag in ("ul", "ol"):
            self.flush()
            self.lists.append([tag == "ol", 1])
        elif tag == "li":
            self.flush()
            if self.lists:
                ordered, number = self.lists[-1]
                self.marker = f"{number}. " if ordered else "- "
                self.lists[-1][1] += 1
        elif tag in _BLOCKS:
            self.flush()
        elif tag in ("td", "th"):
            self.inline.append(" ")

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _SKIPPED:
            return  # <img/>, <svg/>: nothing to skip after them
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip = max(0, self.skip - (tag != "img"))
            return
        if self.skip:
            return
        if self.pre is not None:
            if tag == "pre":
                code = "".join(self.pre).strip("\n")
                self.pre = None
                if code.strip():
                    self.blocks.append(("code", f"```\n{code}\n```"))
            return
        if tag == "code":
            self.inline.append("`")
        elif tag == "a" and self.link_start:
            start = self.link_start.pop()
            if _URL.match("".join(self.inline[start:])):  # a bare address: the link goes entirely
                del self.inline[start:]
        elif tag in ("ul", "ol"):
            self.flush()
            if self.lists:
                self.lists.pop()
        elif tag == "li" or tag in _BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        (self.pre if self.pre is not None else self.inline).append(data)

    def text(self) -> str:
        self.flush()
        if self.pre:  # an unclosed <pre>: keep what it held
            self.blocks.append(("code", "```\n" + "".join(self.pre).strip("\n") + "\n```"))
        out = ""
        for i, (kind, block) in enumerate(self.blocks):
            if i:
                out += "\n" if kind == "li" and self.blocks[i - 1][0] == "li" else "\n\n"
            out += block
        return out.strip()


def html_to_text(html: str) -> str:
    """A Stack Exchange body (rendered HTML) as plain text: code blocks and lists kept, links (their
    addresses), images and other tags removed."""
    cleaner = _Cleaner()
    cleaner.feed(html)
    cleaner.close()
    return cleaner.text()


_MENTION = re.compile(r"^(?:\s*@[\w.\-]+[,:]?)+\s*")  # "@alice @bob: ..." addresses; the dialogue needs no names
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:https?://|/)[^)\s]*\)")
_BARE_URL = re.compile(r"(?:https?://|www\.)\S+")


def comment_to_text(comment: str) -> str:
    """A Stack Exchange comment (its markdown source, as Comments.xml holds it) as plain text, by the
    rules of `html_to_text`: a link keeps its words but not its address, a bare address goes; the
    leading @mentions go too (they address a person, the dialogue has two)."""
    text = _MENTION.sub("", comment)
    text = _MD_LINK.sub(lambda m: m.group(1), text)
    text = _BARE_URL.sub("", text)
    return re.sub(r"[ \t]+", " ", text).strip()


_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def prose(text: str) -> str:
    """The text without its code (fenced blocks and inline code): what the style rules read, so a
    variable named `I` or a comment in a code block does not count as the author's voice."""
    return _CODE.sub(" ", text)


# The paper names "I" and "my"; the other forms are the same voice. "I" counts only as a capital
# word (so "i.e." and a loop variable `i` do not); the rest are matched case-insensitively.
FIRST_PERSON = ("I", "I'm", "I've", "I'd", "I'll", "me", "my", "mine", "myself")
_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")


def first_person(text: str, words: tuple[str, ...] = FIRST_PERSON) -> str | None:
    """The first first-person word in the prose of `text`, or None."""
    capital = {w.replace("’", "'") for w in words if w.startswith("I")}
    lower = {w.lower() for w in words if not w.startswith("I")}
    for match in _WORD.finditer(prose(text)):
        word = match.group().replace("’", "'")
        if word in capital or word.lower() in lower:
            return word
    return None


def load_phrases(path: str | None = None) -> tuple[str, ...]:
    """The phrases that mark an answer as referring to other answers or to the site: one per line,
    `#` comments; the shipped list (lima_jax/curate/reference_phrases.txt) unless `path` is given."""
    if path is None:
        text = resources.files("lima_jax.curate").joinpath("reference_phrases.txt").read_text(encoding="utf-8")
    else:
        from lima_jax.storage.paths import user_path

        text = user_path(path).read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip().lower() for line in text.splitlines())
    return tuple(line for line in lines if line)


def reference_phrase(text: str, phrases: tuple[str, ...]) -> str | None:
    """The first phrase of `phrases` found in the prose of `text` (whole words, any case), or None."""
    lowered = re.sub(r"\s+", " ", prose(text).lower())
    for phrase in phrases:
        if re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", lowered):
            return phrase
    return None


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def prompt_key(prompt: str) -> str:
    """Two prompts are exact duplicates when their words are the same (case, spacing and punctuation aside)."""
    return " ".join(words(prompt))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of `text`; a text shorter than n words is its own single gram, so that a short
    prompt matches only a prompt with exactly its words."""
    w = words(text)
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
