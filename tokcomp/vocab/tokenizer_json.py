"""Read a `tokenizers` tokenizer.json: its model type, id table, protected ids and base alphabet.

Every tokenizer type of the `tokenizers` library stores its vocabulary in `model`:
WordPiece / WordLevel / BPE as {token: id}, Unigram as an ordered [[piece, score], ...]
list. Added tokens live outside it and may carry ids beyond it.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tokcomp.errors import TokcompError

KINDS = ("WordPiece", "WordLevel", "BPE", "Unigram")
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPIECE = "\u2581"  # SentencePiece's word-boundary marker
# Language-neutral characters: runs of them (",", ").", "----", "\n\n", "2019") appear in text of any language.
SYMBOLS = frozenset(string.punctuation + string.digits + " \t\n\r")
# A script counts as a corpus script when it writes at least this share of the corpus's letters
# (word lists carry a few foreign words; one stray kanji should not keep every CJK character).
SCRIPT_MIN_SHARE = 0.01


@dataclass
class TokenizerJson:
    data: dict[str, Any]
    kind: str
    tokens: list[str | None]  # old id -> token string (None: an id no token uses)
    model_size: int  # ids below this are in model.vocab; added tokens may extend past it
    ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TokenizerJson:
        model = data.get("model") or {}
        kind = model.get("type")
        if kind not in KINDS:
            raise TokcompError(
                f"tokenizer model type {kind!r} is not supported by vocab_trim", hint=f"supported: {', '.join(KINDS)}"
            )
        if kind == "Unigram":
            pairs = {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
            model_size = len(model["vocab"])
        else:
            pairs = dict(model["vocab"])
            model_size = max(pairs.values(), default=-1) + 1
        ids = dict(pairs)
        for added in data.get("added_tokens") or []:
            ids.setdefault(added["content"], added["id"])
        size = max(ids.values(), default=-1) + 1
        tokens: list[str | None] = [None] * size
        for token, i in pairs.items():
            tokens[i] = token
        for added in data.get("added_tokens") or []:
            if tokens[added["id"]] is None:
                tokens[added["id"]] = added["content"]
        return cls(data, kind, tokens, model_size, ids)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    # ----------------------------------------------------------------- properties of the type

    @property
    def byte_level(self) -> bool:
        """GPT-2 style: every byte is one of 256 printable symbols, so any text encodes."""
        return any(node.get("type") == "ByteLevel" for node in _nodes(self.data.get("pre_tokenizer"))) or any(
            node.get("type") == "ByteLevel" for node in _nodes(self.data.get("decoder"))
        )

    @property
    def byte_fallback(self) -> bool:
        return bool(self.model.get("byte_fallback"))

    @property
    def word_marker(self) -> str | None:
        """The character that stands for a space inside tokens (SentencePiece "▁"), if any."""
        for node in _nodes(self.data.get("pre_tokenizer")):
            if node.get("type") == "Metaspace":
                return node.get("replacement", _SPIECE)
        for node in _nodes(self.data.get("normalizer")):
            if node.get("type") == "Replace" and node.get("pattern", {}).get("String") == " ":
                return node.get("content")
        return None

    @property
    def unk_id(self) -> int | None:
        if self.kind == "Unigram":
            return self.model.get("unk_id")
        unk = self.model.get("unk_token")
        return self.ids.get(unk) if unk is not None else None

    # ----------------------------------------------------------------- ids that must survive

    def protected_ids(self) -> dict[str, set[int]]:
        """Ids a trim must keep, by reason: added/special tokens, post-processor and padding ids, unk."""
        reasons = {
            "added_tokens": {a["id"] for a in self.data.get("added_tokens") or []},
            "post_processor": set(post_processor_ids(self.data.get("post_processor"))),
            "padding": set(),
            "unk": set(),
        }
        padding = self.data.get("padding")
        if isinstance(padding, dict) and padding.get("pad_id") is not None:
            reasons["padding"].add(padding["pad_id"])
        if self.unk_id is not None:
            reasons["unk"].add(self.unk_id)
        return reasons

    def alphabet_ids(self, corpus_chars: Counter) -> set[int]:
        """The base alphabet that keeps any text encodable (see docs/vocab.md, "Always kept")."""
        if self.kind == "WordPiece":
            # WordPiece is all-or-nothing per word: one missing "##c" turns the whole word into [UNK].
            prefix = self.model.get("continuing_subword_prefix") or "##"
            return {i for i, t in enumerate(self.tokens) if t and (len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1))}
        kept: set[int] = set()
        if self.byte_level:
            from tokenizers.pre_tokenizers import ByteLevel

            kept |= {self.ids[c] for c in ByteLevel.alphabet() if c in self.ids}
        if self.byte_fallback:
            kept |= {i for i, t in enumerate(self.tokens) if t and _BYTE_PIECE.fullmatch(t)}
        if not self.byte_level:
            chars = ScriptChars(corpus_chars)
            marker = self.word_marker
            kept |= {i for i, t in enumerate(self.tokens) if t and _single_char(t, marker, self.model) in chars}
        return kept

    def symbol_ids(self) -> set[int]:
        """Tokens made only of ASCII digits, punctuation and whitespace (the word marker counts as a space)."""
        decode = _byte_level_decoder() if self.byte_level else None
        marker = self.word_marker
        prefix = self.model.get("continuing_subword_prefix") if self.kind in ("WordPiece", "BPE") else None
        kept = set()
        for i, token in enumerate(self.tokens):
            if token is None:
                continue
            text = token
            if prefix and text.startswith(prefix) and len(text) > len(prefix):
                text = text[len(prefix) :]
            if decode is not None:
                text = decode(text)
            elif marker:
                text = text.replace(marker, " ")
            if text and all(c in SYMBOLS for c in text):
                kept.add(i)
        return kept

    def merges(self) -> list[tuple[str, str]]:
        """BPE merges as (left, right) pairs in rank order."""
        out = []
        for merge in self.model.get("merges") or []:
            if isinstance(merge, str):
                left, _, right = merge.partition(" ")
                out.append((left, right))
            else:
                out.append((merge[0], merge[1]))
        return out

    def merge_result(self, left: str, right: str) -> str:
        prefix = self.model.get("continuing_subword_prefix")
        if prefix and right.startswith(prefix):
            right = right[len(prefix) :]
        return left + right


def _single_char(token: str, marker: str | None, model: dict[str, Any]) -> str | None:
    """The character a one-character token stands for ("▁a" and "##a" count as "a"), else None."""
    for affix in (marker, model.get("continuing_subword_prefix")):
        if affix and token.startswith(affix) and len(token) > len(affix):
            token = token[len(affix) :]
    suffix = model.get("end_of_word_suffix")
    if suffix and token.endswith(suffix) and len(token) > len(suffix):
        token = token[: -len(suffix)]
    return token if len(token) == 1 else None


class ScriptChars:
    """Characters of the corpus, printable ASCII, and every letter of the scripts the corpus writes in."""

    def __init__(self, chars: Counter) -> None:
        self.chars = set(chars)
        letters: Counter = Counter()
        for char, count in chars.items():
            if unicodedata.category(char).startswith("L"):
                letters[_script(char)] += count
        total = sum(letters.values())
        self.scripts = {script for script, count in letters.items() if count >= SCRIPT_MIN_SHARE * total}

    def __contains__(self, char: object) -> bool:
        if not isinstance(char, str) or len(char) != 1:
            return False
        if char in self.chars or " " <= char <= "~":
            return True
        return unicodedata.category(char).startswith("L") and _script(char) in self.scripts


def _script(char: str) -> str:
    # Unicode names start with the script: "LATIN SMALL LETTER E WITH ACUTE", "CYRILLIC CAPITAL LETTER ZHE".
    return unicodedata.name(char, "UNKNOWN").split(" ")[0]


def _byte_level_decoder():
    """GPT-2's byte-to-symbol table, inverted: a byte-level token -> the text its bytes spell."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbol_of = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbol_of:
            symbol_of[b] = chr(256 + extra)
            extra += 1
    byte_of = {symbol: b for b, symbol in symbol_of.items()}

    def decode(token: str) -> str:
        if any(c not in byte_of for c in token):
            return token
        return bytes(byte_of[c] for c in token).decode("utf-8", errors="replace")

    return decode


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """A normalizer / pre-tokenizer / decoder and, for Sequence types, its members."""
    if not isinstance(node, dict):
        return
    yield node
    for key in ("pretokenizers", "normalizers", "decoders", "processors"):
        for child in node.get(key) or []:
            yield from _nodes(child)


def post_processor_ids(node: Any) -> Iterator[int]:
    for _path, value in _post_processor_slots(node):
        yield value


def _post_processor_slots(node: Any) -> Iterator[tuple[tuple, int]]:
    """(location, id) of every id in a post-processor, for reading and rewriting alike."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for name, special in (node.get("special_tokens") or {}).items():
            for k, value in enumerate(special.get("ids") or []):
                yield ("special_tokens", name, "ids", k), value
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            yield (key, 1), node[key][1]
    elif kind == "Sequence":
        for k, child in enumerate(node.get("processors") or []):
            for path, value in _post_processor_slots(child):
                yield ("processors", k, *path), value
    elif kind != "ByteLevel":
        raise TokcompError(
            f"post-processor type {kind!r} is not supported by vocab_trim",
            hint="supported: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence",
        )


def remap_post_processor(node: Any, old2new) -> Any:
    """A copy of the post-processor with every id remapped."""
    import copy

    if node is None:
        return None
    node = copy.deepcopy(node)
    for path, value in list(_post_processor_slots(node)):
        target = node
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = int(old2new[value])
    return node
