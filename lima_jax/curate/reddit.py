"""Pushshift Reddit dumps -> r/WritingPrompts training pairs or r/AskReddit test prompts (LIMA §2.1).

The inputs are zstandard-compressed NDJSON files, monthly or per subreddit, read as streams
(dumps.ndjson_lines) in any order and mix: submissions and comments are told apart line by line. A
WritingPrompts pair is a prompt's untagged title and its top-scored top-level comment; an AskReddit
test prompt is a title with no body. Both rank by the submission's score. The rules are listed in
docs/curation.md."""
from __future__ import annotations

import html
import re
from typing import Any

from lima_jax.curate import dumps
from lima_jax.curate.report import Report
from lima_jax.curate.sampling import Candidate
from lima_jax.errors import LimaError

SUBREDDITS = {"writingprompts": "WritingPrompts", "askreddit": "AskReddit"}
PROMPT_TAGS = ("WP", "EU", "CW", "RF", "TT")  # writing prompt, established universe, constrained, reality fiction, theme
MIN_COMMENT_SCORE = 10  # the paper's filters: the same bar as Stack Exchange's top answers
_GONE = ("[deleted]", "[removed]")
_BOTS = ("automoderator",)
_TAG = re.compile(r"^\s*[\[(]\s*([A-Za-z]{2})\s*[\])]\s*")

_RULES = {
    "writingprompts": {
        "not_a_prompt": f"the title's tag is not one of {', '.join('[' + t + ']' for t in PROMPT_TAGS)}",
        "removed": "the submission was deleted or removed",
        "nsfw": "the submission is marked over 18",
        "no_response": "no top-level comment that counts (with the paper's filters: none scoring at least 10)",
    },
    "askreddit": {
        "removed": "the submission was deleted or removed",
        "nsfw": "the submission is marked over 18",
        "has_body": "the submission has text besides its title (not self-contained)",
    },
}


def rules(subreddit: str) -> dict[str, str]:
    return _RULES[subreddit]


def clean_markdown(body: str) -> str:
    """A comment's Markdown as plain-ish text: entities decoded, links reduced to their words, bare
    addresses removed, "Edit:" paragraphs (thanks for the gold...) dropped."""
    body = html.unescape(body)
    body = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", body)
    body = re.sub(r"(?:https?://|www\.)[^\s)\]>]+", "", body)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body)]
    paragraphs = [p for p in paragraphs if p and not re.match(r"^[*_~]*\s*(edit|update)\b", p, re.I)]
    return "\n\n".join(paragraphs).strip()


def _id36(value: Any) -> int:
    try:
        return int(str(value), 36)
    except ValueError:
        return 0


def _removed(post: dict[str, Any]) -> bool:
    return post.get("selftext") in _GONE or post.get("title") in _GONE or bool(post.get("removed_by_category"))


def candidates(inputs: list[str], report: Report, *, subreddit: str = "writingprompts", filtered: bool = True) -> list[Candidate]:
    """The subreddit's submissions that pass the rules, best-scored first."""
    wanted = subreddit.lower()
    name = "r/" + SUBREDDITS[wanted]
    submissions: dict[str, dict[str, Any]] = {}
    best: dict[str, dict[str, Any]] = {}  # submission id -> its best top-level comment so far
    for path in inputs:
        for lineno, post in dumps.ndjson_lines(path):
            if str(post.get("subreddit", "")).lower() != wanted:
                continue
            if not isinstance(post.get("id"), str):
                raise LimaError(f"{path}:{lineno}: a post without a string 'id'")
            if "title" in post:
                submissions[post["id"]] = {k: post.get(k) for k in ("id", "title", "selftext", "score", "over_18", "permalink", "removed_by_category")}
            elif "link_id" in post and wanted == "writingprompts":
                link, parent = str(post.get("link_id", "")), str(post.get("parent_id", ""))
                if parent != link or not link.startswith("t3_"):
                    continue  # a reply to a comment
                if str(post.get("author", "")).lower() in _BOTS or post.get("stickied") or post.get("body") in _GONE:
                    continue
                score = int(post.get("score") or 0)
                if filtered and score < MIN_COMMENT_SCORE:
                    continue
                sid, current = link[3:], best.get(link[3:])
                if current is None or (score, -_id36(post["id"])) > (current["score"], -_id36(current["id"])):
                    best[sid] = {"id": post["id"], "score": score, "body": post.get("body") or "", "author": post.get("author")}
    out = []
    for sid, post in submissions.items():
        report.seen(name)
        title = re.sub(r"\s+", " ", html.unescape(str(post.get("title") or ""))).strip()
        tag = _TAG.match(title)
        url = "https://www.reddit.com" + (post.get("permalink") or f"/r/{SUBREDDITS[wanted]}/comments/{sid}/")
        meta: dict[str, Any] = {"subreddit": SUBREDDITS[wanted], "submission_id": sid, "submission_score": int(post.get("score") or 0), "url": url}
        if wanted == "writingprompts":
            if not tag or tag.group(1).upper() not in PROMPT_TAGS or not title[tag.end():].strip():
                report.drop(name, "not_a_prompt")
                continue
        if _removed(post) or not title:
            report.drop(name, "removed")
            continue
        if post.get("over_18"):
            report.drop(name, "nsfw")
            continue
        if wanted == "askreddit":
            if (post.get("selftext") or "").strip():
                report.drop(name, "has_body")
                continue
            prompt, response = title, None
        else:
            comment = best.get(sid)
            response = clean_markdown(comment["body"]) if comment else ""
            if not response:
                report.drop(name, "no_response")
                continue
            prompt = title[tag.end():].strip()
            meta.update({"tag": tag.group(1).upper(), "comment_id": comment["id"], "comment_score": comment["score"],
                         "comment_url": url.rstrip("/") + "/" + comment["id"] + "/", "author": comment["author"]})
        out.append(Candidate(prompt, response, SUBREDDITS[wanted].lower(), name, (meta["submission_score"], -_id36(sid)), meta))
    return out
