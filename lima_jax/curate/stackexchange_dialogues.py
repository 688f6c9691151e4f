"""Stack Exchange comment chains -> multi-turn dialogues (LIMA §6's 20 chains from Stack Exchange).

A dialogue is the question, the accepted (else top) answer, then the asker's follow-up comments under
it alternating with the answerer's replies. The paper edited its chains into the assistant's style by
hand; here they can only be filtered: a chain is cut before its first exchange (follow-up + reply) that
fails a rule, and the question is dropped when none is left. The rules are listed in docs/curation.md."""
from __future__ import annotations

import dataclasses
import re

from lima_jax.curate import dumps, text
from lima_jax.curate.report import Report
from lima_jax.curate.sampling import Candidate
from lima_jax.curate import stackexchange
from lima_jax.curate.stackexchange import COMMUNITY_USER, Rules, _int

SOURCE = "multi_turn"  # the `source` of LIMA's own multi-turn records

RULES = {
    "community_user": "posted by the Community user (Id -1): the dump's fake posts",
    "no_answer": "no accepted answer, and none that can count (with the paper's filters: scoring at least 10)",
    "self_answer": "the answer is the asker's own: no one to talk to",
    "no_follow_up": "no comment by the asker under the answer that the answerer replied to",
    "follow_up_not_a_question": "the asker's first follow-up asks nothing (no question mark)",
    "reply_too_short": "the answerer's first reply is shorter than the minimum (40 characters)",
    "reply_first_person": "the answerer's first reply is written in the first person",
    "refers_to_other_answers": "the first exchange, or the answer, refers to other answers or the site",
    "answer_too_short": "the answer is shorter than the minimum once cleaned (400 characters)",
    "answer_too_long": "the answer is longer than the maximum once cleaned (the paper's 4,096 characters)",
    "first_person": "the answer is written in the first person (I, my, me, ...), code aside",
    "empty_prompt": "the question has neither title nor body once cleaned",
}


@dataclasses.dataclass(frozen=True)
class DialogueRules(Rules):
    """The answer's rules are Stack Exchange's (`Rules.answer_verdict`) with a lower minimum length, as
    the answer is one turn of several; the exchanges have rules of their own."""

    min_chars: int = 400
    min_reply_chars: int = 40

    def exchange_verdict(self, follow_up: str, reply: str) -> str | None:
        """The first rule an exchange (the asker's comment, the answerer's reply) fails, or None."""
        if not self.filtered:
            return None
        if "?" not in follow_up:
            return "follow_up_not_a_question"
        if len(reply) < self.min_reply_chars:
            return "reply_too_short"
        if text.first_person(reply, self.first_person_words):
            return "reply_first_person"
        if text.reference_phrase(follow_up, self.reference_phrases) or text.reference_phrase(reply, self.reference_phrases):
            return "refers_to_other_answers"
        return None


@dataclasses.dataclass
class _Question:
    owner: str
    score: int
    accepted: int | None
    answer: tuple[int, int, str] | None = None  # (score, id, owner) of the answer the chain follows
    accepted_found: bool = False


def chosen_answers(path: str, rules: DialogueRules) -> dict[int, _Question]:
    """Pass 1 over Posts.xml: per question, its owner and the answer its chain follows (accepted, else
    the top one that can count). Answers follow their question in the dumps (ids grow)."""
    questions: dict[int, _Question] = {}
    with dumps.posts_xml(path) as rows:
        for row in rows:
            kind = row.get("PostTypeId")
            if kind == "1":
                accepted = row.get("AcceptedAnswerId", "")
                questions[_int(row, "Id", path)] = _Question(row.get("OwnerUserId", ""), int(row.get("Score") or 0),
                                                            int(accepted) if accepted.isdigit() else None)
            elif kind == "2" and row.get("OwnerUserId") not in (None, "", COMMUNITY_USER):
                q = questions.get(_int(row, "ParentId", path))
                if q is None or q.accepted_found:
                    continue
                aid, score = _int(row, "Id", path), _int(row, "Score", path)
                if aid == q.accepted:
                    q.answer, q.accepted_found = (score, aid, row["OwnerUserId"]), True
                elif (not rules.filtered or score >= rules.min_answer_score) and (q.answer is None or score > q.answer[0]):
                    q.answer = (score, aid, row["OwnerUserId"])
    return questions


def comment_chains(path: str, speakers: dict[int, tuple[str, str]]) -> dict[int, list[tuple[str, str]]]:
    """Pass over Comments.xml: per answer id, its comments by the asker or the answerer in time
    order, as (speaker, text) with speaker "asker" or "answerer" and consecutive ones joined."""
    found: dict[int, list[tuple[str, int, str, str]]] = {}
    with dumps.site_xml(path, "Comments.xml") as rows:
        for row in rows:
            post = _int(row, "PostId", path)
            if post not in speakers:
                continue
            asker, answerer = speakers[post]
            user = row.get("UserId")
            who = "asker" if user == asker else "answerer" if user == answerer else None
            if who is not None:
                found.setdefault(post, []).append((row.get("CreationDate", ""), _int(row, "Id", path), who,
                                                   text.comment_to_text(row.get("Text", ""))))
    chains: dict[int, list[tuple[str, str]]] = {}
    for post, comments in found.items():
        turns: list[tuple[str, str]] = []
        for _, _, who, said in sorted(comments):
            if not said:
                continue
            if turns and turns[-1][0] == who:
                turns[-1] = (who, turns[-1][1] + "\n\n" + said)
            elif turns or who == "asker":  # the answerer's addenda before the first follow-up are no replies
                turns.append((who, said))
        chains[post] = turns
    return chains


def exchanges(turns: list[tuple[str, str]], rules: DialogueRules) -> tuple[list[str], str | None]:
    """The chain's follow-ups and replies (alternating, the asker first) up to the first exchange that
    fails a rule; and that rule when it removed the first exchange (or "no_follow_up")."""
    out: list[str] = []
    for i in range(0, len(turns) - 1, 2):  # turns alternate, the asker first; a last unanswered comment is left
        (_, follow_up), (_, reply) = turns[i], turns[i + 1]
        failed = rules.exchange_verdict(follow_up, reply)
        if failed:
            return out, (failed if not out else None)
        out += [follow_up, reply]
    return out, (None if out else "no_follow_up")


def site_candidates(site: str, group: str, path: str, rules: DialogueRules, report: Report) -> list[Candidate]:
    questions = chosen_answers(path, rules)
    dropped: dict[int, str] = {}
    speakers: dict[int, tuple[str, str]] = {}  # answer id -> (asker, answerer)
    for qid, q in questions.items():
        if q.owner == COMMUNITY_USER:
            dropped[qid] = "community_user"
        elif q.answer is None:
            dropped[qid] = "no_answer"
        elif q.answer[2] == q.owner or not q.owner:
            dropped[qid] = "self_answer"
        else:
            speakers[q.answer[1]] = (q.owner, q.answer[2])
    chains = comment_chains(path, speakers)
    kept: dict[int, list[str]] = {}  # answer id -> follow-ups and replies
    for qid, q in questions.items():
        if qid in dropped:
            continue
        turns, failed = exchanges(chains.get(q.answer[1], []), rules)
        if failed:
            dropped[qid] = failed
        else:
            kept[q.answer[1]] = turns
    bodies: dict[int, dict[str, str]] = {}  # pass 3: the texts of the questions and answers with a chain
    wanted = {qid for qid, q in questions.items() if q.answer and q.answer[1] in kept}
    with dumps.posts_xml(path) as rows:
        for row in rows:
            pid = _int(row, "Id", path)
            if pid in wanted or pid in kept:
                bodies[pid] = {k: row.get(k, "") for k in ("Title", "Body", "ContentLicense")}
    out = []
    for qid, q in sorted(questions.items()):
        report.seen(site)
        if qid in dropped:
            report.drop(site, dropped[qid])
            continue
        score, aid, _ = q.answer
        if qid not in bodies or aid not in bodies:  # the file changed between the passes
            report.drop(site, "no_answer")
            continue
        response = text.html_to_text(bodies[aid]["Body"])
        failed = rules.answer_verdict(response)
        if failed:
            report.drop(site, failed)
            continue
        title = re.sub(r"\s+", " ", bodies[qid]["Title"]).strip()
        prompt = "\n\n".join(p for p in (title, text.html_to_text(bodies[qid]["Body"])) if p)
        if not prompt:
            report.drop(site, "empty_prompt")
            continue
        follow_ups = tuple(kept[aid])
        meta = {"site": site, "group": group, "question_id": qid, "answer_id": aid, "question_score": q.score,
                "answer_score": score, "accepted": aid == q.accepted, "exchanges": len(follow_ups) // 2,
                "origin": "stackexchange_comments", "url": f"https://{site}/questions/{qid}",
                "answer_url": f"https://{site}/a/{aid}", "license": bodies[aid]["ContentLicense"] or "CC BY-SA"}
        out.append(Candidate(prompt, response, SOURCE, site, (len(follow_ups), q.score, -qid), meta, group, follow_ups))
    return out


def candidates(inputs: list[str], rules: DialogueRules, report: Report, exchanges_path: str | None = None) -> list[Candidate]:
    """Every site's dialogues, best first within a site (more exchanges, then a higher question score)."""
    return stackexchange.candidates(inputs, rules, report, exchanges_path, per_site=site_candidates)
