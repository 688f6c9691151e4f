"""Stack Exchange dumps -> LIMA-style question/answer candidates (LIMA §2.1).

Each site is read twice, as a stream (dumps.posts_xml): the first pass finds each question's top
answer among those that can count, the second cleans and judges those answers, so what is held is per
candidate, never per post of the file. The rules, in the order a question meets them, are listed in
docs/curation.md."""
from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources
from typing import Callable

from lima_jax.curate import dumps, text
from lima_jax.curate.report import Report
from lima_jax.curate.sampling import Candidate, unit_interval
from lima_jax.errors import LimaError
from lima_jax.storage.paths import Path, user_path

COMMUNITY_USER = "-1"
GROUPS = ("stem", "other", "dropped")

RULES = {
    "community_user": "posted by the Community user (Id -1): the dump's fake posts",
    "no_top_answer": "no answer that can count (with the paper's filters: none scoring at least 10)",
    "answer_too_short": "top answer shorter than the minimum once cleaned (paper: 1,200 characters)",
    "answer_too_long": "top answer longer than the maximum once cleaned (paper: 4,096 characters)",
    "first_person": "top answer written in the first person (I, my, me, ...), code aside",
    "refers_to_other_answers": "top answer refers to other answers or the site (the reference phrase list)",
    "empty_prompt": "the chosen prompt (title or body) is empty once cleaned",
}


@dataclasses.dataclass(frozen=True)
class Rules:
    """The paper's filters (LIMA §2.1); `filtered=False` is the unfiltered arm."""

    filtered: bool = True
    min_answer_score: int = 10
    min_chars: int = 1200
    max_chars: int = 4096
    first_person_words: tuple[str, ...] = text.FIRST_PERSON
    reference_phrases: tuple[str, ...] = ()
    title_ratio: float = 0.5  # the fraction of prompts that are the title (the paper does not say)
    seed: int = 0

    def answer_verdict(self, answer: str) -> str | None:
        """The first rule the cleaned answer fails, or None."""
        if not self.filtered:
            return None
        if len(answer) < self.min_chars:
            return "answer_too_short"
        if len(answer) > self.max_chars:
            return "answer_too_long"
        if text.first_person(answer, self.first_person_words):
            return "first_person"
        if text.reference_phrase(answer, self.reference_phrases):
            return "refers_to_other_answers"
        return None


def load_exchanges(path: str | None = None) -> dict[str, str]:
    """site -> group ("stem", "other" or "dropped") from the exchange list: the shipped one
    (lima_jax/curate/exchanges.tsv) unless `path` names another."""
    if path is None:
        name = "lima_jax/curate/exchanges.tsv"
        content = resources.files("lima_jax.curate").joinpath("exchanges.tsv").read_text(encoding="utf-8")
    else:
        name, content = path, user_path(path).read_text(encoding="utf-8")
    groups: dict[str, str] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in GROUPS:
            raise LimaError(f"{name}:{lineno}: expected 'SITE GROUP' with GROUP one of {', '.join(GROUPS)}, got {line.strip()!r}")
        groups[fields[0].lower()] = fields[1]
    return groups


_OTHER_TABLES = re.compile(r"-(Badges|Comments|PostHistory|PostLinks|Tags|Users|Votes)\.7z$", re.I)


def site_name(path: str) -> str:
    """The site a dump is of, from its name: math.stackexchange.com.7z, stackoverflow.com-Posts.7z, a
    folder math.stackexchange.com/ (holding Posts.xml), or math.stackexchange.com/Posts.xml."""
    p = Path(path)
    if p.name == "Posts.xml":
        p = p.parent
    name = p.name
    for suffix in (".7z", "-Posts"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.lower()


def find_dumps(inputs: list[str]) -> list[tuple[str, str]]:
    """(site, path) for each input: a site's `.7z`, a folder with Posts.xml, or a folder of those
    (a downloaded dump: every site's archive or extracted folder; other tables' archives skipped)."""
    found = []
    for given in inputs:
        p = user_path(given)
        if p.is_dir() and not (p / "Posts.xml").exists():
            archives = sorted(q for q in p.iterdir() if (q.name.endswith(".7z") and not _OTHER_TABLES.search(q.name))
                              or (q / "Posts.xml").is_file())
            if not archives:
                raise LimaError(f"{given}: neither Posts.xml, nor a site's .7z, nor a site's folder in this folder")
            found += [(site_name(os.fspath(q)), os.fspath(q)) for q in archives]
        elif not p.exists():
            raise LimaError(f"{given}: no such file or folder")
        else:
            found.append((site_name(os.fspath(p)), os.fspath(p)))
    return found


def group_of(site: str, exchanges: dict[str, str], exchanges_name: str) -> str:
    if ".meta." in site or site.startswith("meta."):
        return "dropped"  # meta sites discuss the sites themselves
    if site not in exchanges:
        raise LimaError(f"{exchanges_name}: no line for site {site!r}; add '{site}\tstem' or '{site}\tother'")
    return exchanges[site]


def _int(row: dict[str, str], key: str, where: str) -> int:
    try:
        return int(row[key])
    except (KeyError, ValueError):
        raise LimaError(f"{where}: row Id={row.get('Id', '?')} has no integer {key}") from None


def top_answers(path: str, rules: Rules) -> dict[int, tuple[int, int]]:
    """Pass 1: question id -> (score, answer id) of its top answer among those that can count."""
    best: dict[int, tuple[int, int]] = {}
    with dumps.posts_xml(path) as rows:
        for row in rows:
            if row.get("PostTypeId") != "2" or row.get("OwnerUserId") == COMMUNITY_USER:
                continue
            score = _int(row, "Score", path)
            if rules.filtered and score < rules.min_answer_score:
                continue
            parent, answer = _int(row, "ParentId", path), _int(row, "Id", path)
            current = best.get(parent)
            if current is None or (score, -answer) > (current[0], -current[1]):
                best[parent] = (score, answer)
    return best


def site_candidates(site: str, group: str, path: str, rules: Rules, report: Report) -> list[Candidate]:
    """The candidates of one site that pass the source's rules; the others counted in `report`."""
    best = top_answers(path, rules)
    wanted = {answer for _, answer in best.values()}
    questions: dict[int, dict[str, str]] = {}
    answers: dict[int, tuple[str, str | None, dict[str, str]]] = {}  # id -> (cleaned text, failed rule, row)
    with dumps.posts_xml(path) as rows:
        for row in rows:
            kind = row.get("PostTypeId")
            if kind == "1":
                report.seen(site)
                qid = _int(row, "Id", path)
                if row.get("OwnerUserId") == COMMUNITY_USER:
                    report.drop(site, "community_user")
                elif qid not in best:
                    report.drop(site, "no_top_answer")
                else:
                    questions[qid] = {k: row.get(k, "") for k in ("Title", "Body", "Score", "ContentLicense")}
            elif kind == "2":
                aid = _int(row, "Id", path)
                if aid in wanted:
                    cleaned = text.html_to_text(row.get("Body", ""))
                    failed = rules.answer_verdict(cleaned)
                    # a failed answer's text is not needed again: only its verdict is kept
                    answers[aid] = ("" if failed else cleaned, failed, {"Score": row.get("Score", "0"), "ContentLicense": row.get("ContentLicense", "")})
    out = []
    for qid, q in sorted(questions.items()):
        score, aid = best[qid]
        if aid not in answers:  # the answer vanished between the passes: the file changed under us
            report.drop(site, "no_top_answer")
            continue
        response, failed, arow = answers[aid]
        if failed:
            report.drop(site, failed)
            continue
        use_title = unit_interval(rules.seed, site, qid) < rules.title_ratio
        prompt = re.sub(r"\s+", " ", q["Title"]).strip() if use_title else text.html_to_text(q["Body"])
        if not prompt:
            report.drop(site, "empty_prompt")
            continue
        qscore = int(q["Score"] or 0)
        meta = {
            "site": site,
            "group": group,
            "question_id": qid,
            "answer_id": aid,
            "question_score": qscore,
            "answer_score": score,
            "prompt_from": "title" if use_title else "body",
            "title": q["Title"],
            "url": f"https://{site}/questions/{qid}",
            "answer_url": f"https://{site}/a/{aid}",
            "license": arow["ContentLicense"] or "CC BY-SA",
            "question_license": q["ContentLicense"] or "CC BY-SA",
        }
        out.append(Candidate(prompt, response, "stackexchange", site, (qscore, -qid), meta, group))
    return out


def candidates(inputs: list[str], rules: Rules, report: Report, exchanges_path: str | None = None,
               per_site: Callable[..., list[Candidate]] = site_candidates) -> list[Candidate]:
    """Every site's candidates, best first within each site; sites of the "dropped" group are skipped
    (and reported with no candidates). `per_site(site, group, path, rules, report)` reads one site
    (`stackexchange_dialogues` reads comment chains)."""
    exchanges = load_exchanges(exchanges_path)
    name = exchanges_path or "lima_jax/curate/exchanges.tsv"
    found = find_dumps(inputs)
    plan = [(site, group_of(site, exchanges, name), path) for site, path in found]  # every site checked before any is read
    out: list[Candidate] = []
    for site, group, path in plan:
        if group == "dropped":
            report.skipped_inputs.append(site)
            continue
        out += per_site(site, group, path, rules, report)
    return out
