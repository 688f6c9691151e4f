"""wikiHow articles (the public WikiHow-Dataset CSVs) -> "How to X?" prompts with the article as the
answer (LIMA §2.1).

Both layouts (wikihowAll.csv, one row per article; wikihowSep.csv, one row per step) are read, told
apart by their header. An answer is the article's steps, numbered, under its sections' headings, with
Tips, Warnings and the like pruned. The layouts, the rules and the sampling by category are described
in docs/curation.md."""
from __future__ import annotations

import csv
import io
import os
import re
import sys

from lima_jax.curate import text
from lima_jax.curate.report import Report
from lima_jax.curate.sampling import Candidate, unit_interval
from lima_jax.errors import LimaError
from lima_jax.storage.paths import user_path

ALL_COLUMNS = ["headline", "title", "text"]
SEP_COLUMNS = ["overview", "headline", "text", "sectionLabel", "title"]
PRUNED_SECTIONS = {"tips", "warnings", "things you'll need", "things you’ll need", "references", "sources and citations",
                   "video", "related wikihows", "community q&a", "ingredients"}
LICENSE = "CC BY-NC-SA 3.0"  # wikiHow's license for its articles

RULES = {
    "no_title": "the article has no title",
    "steps_unpaired": "wikihowAll: the bold lines and the paragraphs differ in number, so they cannot be paired",
    "no_text": "nothing is left of the article once its pruned sections are removed",
    "no_category": "a category file was given and the article's title is not in it",
}

_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>]+", re.I)


def clean(passage: str) -> str:
    """One passage: "This article" -> "The following answer", addresses out, spaces tidied."""
    passage = _URL.sub("", passage)
    passage = re.sub(r"\b[Tt]his (?:article|wikiHow)\b", lambda m: ("T" if m.group()[0] == "T" else "t") + "he following answer", passage)
    passage = re.sub(r"[ \t]+", " ", passage)
    return re.sub(r" +([.,;:!?)])", r"\1", passage).strip()


def prompt_of(title: str) -> str:
    """"How to Cook an Omelette" -> "How to Cook an Omelette?"."""
    title = re.sub(r"\s+", " ", title).strip()
    return title if not title or title[-1] in "?.!" else title + "?"


def url_of(title: str) -> str:
    name = re.sub(r"^how to\s+", "", title.strip(), flags=re.I)
    return "https://www.wikihow.com/" + re.sub(r"\s+", "-", name)


def _lines(field: str) -> list[str]:
    """The dataset's list-in-a-field: one item a line, with stray leading/trailing commas."""
    items = (clean(line.strip().strip(",").strip()) for line in field.split("\n"))
    return [i for i in items if i]


def _step(number: int, summary: str, paragraph: str) -> str:
    summary = summary if not summary or summary[-1] in ".?!:" else summary + "."
    return f"{number}. " + " ".join(p for p in (summary, paragraph) if p)


def _rows(path: str):
    """(line number, header kind, row dict) for each row of a wikiHow CSV."""
    csv.field_size_limit(sys.maxsize)  # an article's text is one field of tens of kilobytes
    p = user_path(path)
    if not p.is_file():
        raise LimaError(f"{path}: no such file")
    with p.open("rb") as raw:  # epath's text mode takes no `errors=`: decode here, bad bytes replaced
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""))
        header = next(reader, None)
        if header == ALL_COLUMNS:
            kind = "all"
        elif header == SEP_COLUMNS:
            kind = "sep"
        else:
            raise LimaError(f"{path}:1: expected the columns {','.join(ALL_COLUMNS)} (wikihowAll.csv) or "
                            f"{','.join(SEP_COLUMNS)} (wikihowSep.csv), got {','.join(header or [])}")
        end = reader.line_num
        try:
            for fields in reader:
                start, end = end + 1, reader.line_num  # a record spans lines: it is named by its first
                if not any(fields):
                    continue
                if len(fields) != len(header):
                    raise LimaError(f"{path}:{start}: {len(fields)} fields, expected {len(header)}")
                yield start, kind, dict(zip(header, fields))
        except csv.Error as e:
            raise LimaError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _articles(path: str):
    """(line, title, response or the rule it fails) for each article of the file."""
    sep: dict[str, dict] = {}  # wikihowSep: title -> {line, overview, sections: {label: [steps]}}, in file order
    for line, kind, row in _rows(path):
        title = re.sub(r"\s+", " ", row["title"]).strip()
        if kind == "all":
            if not title:
                yield line, title, ("no_title", None)
                continue
            summaries, paragraphs = _lines(row["headline"]), _lines(row["text"])
            if len(summaries) != len(paragraphs):
                yield line, title, ("steps_unpaired", None)
                continue
            steps = [_step(i, s, p) for i, (s, p) in enumerate(zip(summaries, paragraphs), start=1)]
            yield line, title, (None, "\n".join(steps)) if steps else ("no_text", None)
        else:
            article = sep.setdefault(title, {"line": line, "overview": clean(row["overview"]), "sections": {}})
            label = re.sub(r"\s+", " ", row["sectionLabel"]).strip()
            if label.lower() not in PRUNED_SECTIONS:
                article["sections"].setdefault(label, []).append((clean(row["headline"].strip().strip(",")), clean(row["text"])))
    for title, article in sep.items():
        if not title:
            yield article["line"], title, ("no_title", None)
            continue
        sections = {label: [s for s in steps if any(s)] for label, steps in article["sections"].items()}
        sections = {label: steps for label, steps in sections.items() if steps}
        parts = []
        for label, steps in sections.items():
            body = "\n".join(_step(i, s, p) for i, (s, p) in enumerate(steps, start=1))
            parts.append(f"## {label}\n{body}" if len(sections) > 1 and label else body)
        if not parts:
            yield article["line"], title, ("no_text", None)
            continue
        yield article["line"], title, (None, "\n\n".join(p for p in [article["overview"], *parts] if p))


def load_categories(path: str) -> dict[str, str]:
    """Normalised title -> category from a CSV or TSV file of `title,category` lines."""
    p = user_path(path)
    if not p.is_file():
        raise LimaError(f"{path}: no such file")
    content = p.read_text(encoding="utf-8")
    delimiter = "\t" if "\t" in content.split("\n", 1)[0] else ","
    out = {}
    for lineno, fields in enumerate(csv.reader(content.splitlines(), delimiter=delimiter), start=1):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != 2 or not fields[1].strip():
            raise LimaError(f"{path}:{lineno}: expected 'title,category', got {delimiter.join(fields)!r}")
        out[text.prompt_key(fields[0])] = fields[1].strip()
    return out


def candidates(inputs: list[str], report: Report, *, seed: int = 0, categories: str | None = None) -> list[Candidate]:
    """Every article of the CSVs that passes the rules, counted per category (or per file)."""
    category_of = load_categories(categories) if categories else None
    out = []
    for path in inputs:
        name = os.path.basename(path)
        for line, title, (failed, response) in _articles(path):
            category = category_of.get(text.prompt_key(title)) if category_of is not None else None
            stratum = category or (name if category_of is None else "(no category)")
            report.seen(stratum)
            if failed is None and category_of is not None and category is None:
                failed = "no_category"
            if failed:
                report.drop(stratum, failed)
                continue
            meta = {"title": title, "url": url_of(title), "category": category, "file": name, "line": line, "license": LICENSE}
            out.append(Candidate(prompt_of(title), response, "wikihow", stratum, (unit_interval(seed, "wikihow", title),), meta))
    return out
