"""Tokenizer (``tokenizers`` library), chat template (jinja2), streaming detokenization.

Byte-level BPE maps every token to an exact byte string, so the engine keeps bytes, not text:
:meth:`Tokenizer.token_bytes` is the source for detokenization, and :class:`StreamDecoder`
turns a stream of token bytes into text deltas that never split a UTF-8 sequence.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from llm_engine.errors import InvalidRequest, ModelLoadError

Message = dict[str, Any]
_SENTINEL = "\x00\x01parley-open-message\x01\x00"


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable char standing for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Tokenizer:
    """Encode text, map tokens to bytes, render the model's chat template.

    Built from ``tokenizer.json`` text and the parsed ``tokenizer_config.json``.
    ``eos_ids`` are the end-of-turn tokens: the config's eos plus the model config's list.
    """

    def __init__(
        self, tokenizer_json: str, tokenizer_config: dict[str, Any], eos_ids: Sequence[int] = ()
    ) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_str(tokenizer_json)
        except Exception as err:
            raise ModelLoadError(f"cannot parse tokenizer.json: {err}") from err
        self.config = tokenizer_config
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._bytes = self._build_byte_table()
        self.bos_token = _token_text(tokenizer_config.get("bos_token"))
        self.eos_token = _token_text(tokenizer_config.get("eos_token"))
        ids = set(eos_ids)
        eid = None if self.eos_token is None else self._tok.token_to_id(self.eos_token)
        if eid is not None:
            ids.add(eid)
        self.eos_ids = frozenset(ids)
        added = self._tok.get_added_tokens_decoder().items()
        self.special_ids = frozenset(i for i, t in added if t.special)  # <|im_start|>, ...
        self._template = self._compile(tokenizer_config.get("chat_template"))

    def _build_byte_table(self) -> list[bytes]:
        dec = _byte_decoder()
        added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items()}
        table = []
        for i in range(self.vocab_size):
            if i in added:
                table.append(added[i].encode())
                continue
            s = self._tok.id_to_token(i) or ""
            table.append(bytes(dec[c] for c in s) if all(c in dec for c in s) else s.encode())
        return table

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Tokens of ``text``; special tokens written in the text are parsed, and nothing is
        added unless ``add_special_tokens`` (what the tokenizer's post-processor adds)."""
        check_utf8(text)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def token_str(self, token_id: int) -> str:
        """The token as the vocabulary spells it (byte-level BPE: "Ġthe" for " the")."""
        return self._tok.id_to_token(token_id) or ""

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self._bytes[i] for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- chat template -------------------------------------------------------------------

    @staticmethod
    def _compile(source: str | None) -> Any:
        if not source:
            return None
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg: str) -> None:
            raise TemplateError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(source)
        except TemplateError as err:
            raise ModelLoadError(f"cannot compile the chat template: {err}") from err

    def render(
        self,
        messages: list[Message],
        *,
        add_generation_prompt: bool = False,
        open_last: bool = False,
    ) -> str:
        """Render ``messages`` with the chat template.

        ``open_last`` leaves the last message open: the text stops right after its content (no
        end-of-message marker), so a partial transcript can be prefilled and continued later.
        """
        if self._template is None:
            raise InvalidRequest("this model has no chat template; append raw text instead")
        from jinja2.exceptions import TemplateError

        msgs = [dict(m) for m in messages]
        if open_last:
            msgs[-1]["content"] = f"{msgs[-1]['content']}{_SENTINEL}"
        try:
            text = str(
                self._template.render(
                    messages=msgs,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                    tools=None,
                )
            )
        except TemplateError as err:
            raise InvalidRequest(f"chat template rejected the messages: {err}") from err
        if open_last:
            cut = text.find(_SENTINEL)
            if cut < 0:
                raise InvalidRequest("the chat template dropped the open message's content")
            text = text[:cut]
        return text


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):  # {"content": "<|im_end|>", ...} in older tokenizer configs
        return str(tok.get("content"))
    return None if tok is None else str(tok)


def check_utf8(text: str) -> None:
    """Raise ``InvalidRequest`` if ``text`` cannot be encoded as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRequest(f"text is not valid UTF-8: {err.reason} at {err.start}") from err


def validate_messages(messages: Any) -> list[Message]:
    """Check a chat message list: non-empty, each ``{"role": str, "content": str}``, UTF-8."""
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise InvalidRequest(f"message {i} needs a non-empty string 'role'")
        content = m.get("content")
        if isinstance(content, bytes):
            try:
                content = content.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidRequest(f"message {i} content is not valid UTF-8") from err
        if not isinstance(content, str):
            raise InvalidRequest(f"message {i} needs a string 'content'")
        check_utf8(content)
        out.append({**m, "content": content})
    return out


class StreamDecoder:
    """Token bytes in, text deltas out; never emits half a UTF-8 sequence.

    With stop strings, text that could be the start of a stop string is held back until it is
    decided; :attr:`stopped` turns true once one matched (the stop string is not emitted).
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._utf8.decode(data)
        if not self._stop:
            return text
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = max((_overlap(text, s) for s in self._stop), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of stream: emit held-back text. An incomplete UTF-8 tail (generation cut inside a
        character) is dropped rather than emitted as U+FFFD; its token stays in the sequence."""
        if self.stopped:
            return ""
        self._utf8.reset()
        text, self._held = self._held, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
