"""Conversations rendered by a tokenizer's own Jinja chat template (`data.chat_format=template`).

The template is rendered and tokenized whole, as transformers' `apply_chat_template(tokenize=True)`
does. Which tokens carry loss is found from the template itself, without knowing its markup: assistant
turn i spans from the end of `render(turns[:i], add_generation_prompt=True)` to the end of
`render(turns[:i + 1])` (a conversation renders as the prefix of its continuations), cut after the
end-of-turn token it holds, so the answer and the token that stops it are trained. Templates that break
this fall back to finding the assistant's text in the rendering, and every example is checked (each span
holds its text and the end-of-turn token; the mask is neither all zeros nor all ones), so a run never
trains silently on nothing or on everything."""
from __future__ import annotations

import datetime
import functools
import json
from typing import Callable, Sequence

from lima_jax.errors import LimaError

ROLES = ("user", "assistant")


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tags) renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatTemplate:
    """Renders LIMA's turns (user, assistant, user, ...) with a tokenizer's template."""

    def __init__(self, template: str, variables: dict[str, str], eot: str, where: str) -> None:
        self.where = where  # the tokenizer, for error messages
        self.eot = eot  # the end-of-turn token's text, which closes an assistant span
        self.variables = variables  # bos_token, eos_token, ...: what templates read besides the messages
        try:
            self.compiled = _compile(template)
        except Exception as e:  # noqa: BLE001 - jinja2's syntax errors
            raise LimaError(f"chat template of {where}: it does not compile ({e})") from None

    def render(self, turns: Sequence[str], add_generation_prompt: bool = False) -> str:
        messages = [{"role": ROLES[i % 2], "content": t} for i, t in enumerate(turns)]
        try:
            return self.compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as e:  # noqa: BLE001 - raise_exception() and the template's own errors
            raise LimaError(f"chat template of {self.where}: rendering a {len(turns)}-turn conversation failed ({e})") from None

    def render_spans(self, turns: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the [start, end) character span of each assistant turn in it."""
        text = self.render(turns)
        spans, pos = [], 0
        for i in range(1, len(turns), 2):
            before = self.render(turns[:i], add_generation_prompt=True)
            upto = self.render(turns[: i + 1])
            content = turns[i] if turns[i] in text[pos:] else turns[i].strip()  # templates may trim it (Llama 3's does)
            if text.startswith(before) and text.startswith(upto) and pos <= len(before) < len(upto):
                start, end = len(before), len(upto)
            else:  # not prefix-stable: the assistant's own text, after the previous span
                start = text.find(content, pos)
                end = start + len(content)
                after = text[end:]
                if after.lstrip().startswith(self.eot):  # the turn's closing token is trained too
                    end += len(after) - len(after.lstrip()) + len(self.eot)
            if start < 0 or content not in text[start:end]:
                raise LimaError(
                    f"chat template of {self.where}: assistant turn {i // 2 + 1}'s text does not appear in the rendered "
                    "conversation, so no loss mask can be found for it"
                )
            closing = text.rfind(self.eot, start, end)
            if closing >= 0:  # the answer and the token that stops it; not the markup after it ("\n")
                end = closing + len(self.eot)
            spans.append((start, end))
            pos = end
        return text, spans


def loss_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose first character lies in an assistant span."""
    return [int(any(s <= a < e for s, e in spans)) for a, _ in offsets]


def check_example(ids: Sequence[int], mask: Sequence[int], eot_id: int, where: str, token: Callable[[int], str]) -> None:
    """Fails loudly on a mask that trains on nothing, on everything, or on spans without the EOT."""
    if not any(mask):
        raise LimaError(f"chat template of {where}: a conversation got an all-zero loss mask (no assistant token is trained)")
    if all(mask):
        raise LimaError(f"chat template of {where}: a conversation got an all-one loss mask (the prompts would be trained on)")
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    for run in runs:
        if eot_id not in run:
            raise LimaError(
                f"chat template of {where}: an assistant turn is not closed by the end-of-turn token "
                f"{token(eot_id)!r} (config key data.eot), so the model would never learn to stop"
            )
