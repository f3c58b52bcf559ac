"""Tokenizers behind one small interface: encode, decode and the special ids DoT needs.

Every tokenizer has `pad_id`, `sep_id`, `eos_id` and `mask_id`. `mask_id == vocab_size` always:
the absorbing state of discrete diffusion sits just past the tokenizer's vocabulary, so a model
over `vocab_size + 1` symbols covers it (SEDD's convention, 50257 for GPT-2).

* `CharTokenizer`: one id per character, no files; for arithmetic tasks. With
  `skip_spaces=True` ('symbols') spaces are not tokens and decoding joins symbols with single
  spaces: lossless up to spacing for the space-separated multiplication format, and half as
  many positions to diffuse.
* `JsonTokenizer`: any Hugging Face `tokenizers` JSON file, optionally splitting every digit
  into its own chunk first (Plaid's `--digit` mode); specials from the file's strings.
* `load_tokenizer('gpt2' | 'owt2' | 'char' | path)`: the presets of the two DoT code bases.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Protocol, Sequence

SHARED_TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    sep_id: int
    eos_id: int
    mask_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or lacks a special token DoT needs."""


class TokenizerNotFoundError(TokenizerError, FileNotFoundError):
    """A tokenizer file that does not exist."""


class CharTokenizer:
    """Character-level tokenizer over printable ASCII; needs no files.

    Ids 0-3 are PAD, SEP, EOS and UNK; every printable ASCII character follows. Decoding writes
    the specials as `<pad>`, `||`, `<eos>` and `<unk>` so generated text stays readable.
    """

    specials = ("<pad>", "||", "<eos>", "<unk>")

    def __init__(self, skip_spaces: bool = False) -> None:
        self.skip_spaces = skip_spaces
        chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
        self.itos = list(self.specials) + chars
        self._stoi = {c: i for i, c in enumerate(chars, start=len(self.specials))}
        self.pad_id, self.sep_id, self.eos_id, self.unk_id = range(4)
        self.vocab_size = len(self.itos)
        self.mask_id = self.vocab_size

    def encode(self, text: str) -> list[int]:
        return [self._stoi.get(c, self.unk_id) for c in text if not (self.skip_spaces and c == " ")]

    def decode(self, ids: Sequence[int]) -> str:
        symbols = [self.itos[i] if 0 <= i < self.vocab_size else "<mask>" for i in ids]
        return (" " if self.skip_spaces else "").join(symbols)


class JsonTokenizer:
    """A `tokenizers` JSON file with DoT's special strings looked up in its vocabulary.

    With `digits=True` the text is first cut into single digits and maximal non-digit runs and
    each chunk is encoded on its own (Plaid/DoT `--digit`), so every digit is one token.
    """

    def __init__(self, tok, source: str, *, eos: str, sep: str, pad: str,
                 digits: bool = False) -> None:
        from tokenizers.pre_tokenizers import Digits

        self.source = source
        self._tok = tok
        self._digits = Digits(individual_digits=True) if digits else None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id, self.sep_id, self.pad_id = (self._single_id(s, role)
                                                 for s, role in ((eos, "eos"), (sep, "sep"), (pad, "pad")))
        self.mask_id = self.vocab_size

    @classmethod
    def from_file(cls, path: str | os.PathLike, **specials) -> "JsonTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if not Path(path).is_file():
            raise TokenizerNotFoundError(f"tokenizer file {path} not found; use data.tokenizer=char, "
                                         "or point data.tokenizer at a tokenizers JSON file")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as err:  # not JSON, or not a tokenizers file
            raise TokenizerError(f"tokenizer file {path} cannot be read ({str(err)[:150]}); it "
                                 "must be a Hugging Face tokenizers JSON file") from None
        return cls(hf, str(path), **specials)

    def _single_id(self, text: str, role: str) -> int:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if len(ids) != 1:
            raise TokenizerError(f"tokenizer {self.source}: the {role} string {text!r} is not a single "
                                 f"token (it encodes to {ids}); choose a tokenizer that has it")
        return ids[0]

    def encode(self, text: str) -> list[int]:
        if self._digits is None:
            return self._tok.encode(text, add_special_tokens=False).ids
        chunks = [piece for piece, _ in self._digits.pre_tokenize_str(text)]
        return [i for enc in self._tok.encode_batch(chunks, add_special_tokens=False) for i in enc.ids]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=False)


# Special strings of the two official code bases (see shared/data/tokenizers/README.md).
OWT2_SPECIALS = dict(eos="<|endoftext_R9VQqF0Ag7|>", sep="-" * 64, pad="ÃÂ" * 16)
GPT2_SPECIALS = dict(eos="<|endoftext|>", sep="||", pad="<|endoftext|>")  # PAD = EOS in dot-sedd


def _gpt2() -> JsonTokenizer:
    """GPT-2: a local tokenizer.json when available, else `transformers`' hub copy."""
    local = os.environ.get("DOT_GPT2_TOKENIZER") or SHARED_TOKENIZERS / "gpt2_tokenizer.json"
    if Path(local).is_file():
        return JsonTokenizer.from_file(local, **GPT2_SPECIALS)
    try:
        from transformers import GPT2TokenizerFast
        hub = GPT2TokenizerFast.from_pretrained("gpt2")
    except OSError as err:  # offline and no local file
        raise TokenizerError("GPT-2 tokenizer not found: set DOT_GPT2_TOKENIZER to a local "
                             "gpt2 tokenizer.json, or go online so transformers can fetch 'gpt2'"
                             ) from err
    return JsonTokenizer(hub.backend_tokenizer, "hub:gpt2", **GPT2_SPECIALS)


def tokenizer_name(setting: str, task_default: str | None, backbone_text: str | None) -> str:
    """What `data.tokenizer` means: a name, or `auto` = the task's own choice (characters for
    multiplication), else, for natural language, the backbone's pretrained tokenizer
    (`backbone.text_tokenizer`: gpt2 for SEDD, owt2 for Plaid), which pretrained weights need."""
    if setting != "auto":
        return setting
    name = task_default or backbone_text
    if name is None:
        raise TokenizerError("data.tokenizer=auto: this backbone names no text_tokenizer; set "
                             "data.tokenizer=char|symbols|owt2|gpt2|PATH.json")
    return name


def run_tokenizer_name(cfg: Any) -> str:
    """The tokenizer name a run config (`data.tokenizer`, `data.task`, `backbone`) stands for."""
    from dot.tasks import get_task

    return tokenizer_name(cfg.data.tokenizer, get_task(cfg.data.task).tokenizer,
                          cfg.backbone.get("text_tokenizer"))


def load_tokenizer(name: str, digits: bool = False) -> Tokenizer:
    """`char`, `symbols` (char without spaces), `owt2` (Plaid), `gpt2` (SEDD), or a path to a
    tokenizers JSON file (owt2 specials)."""
    if name in ("char", "symbols"):
        return CharTokenizer(skip_spaces=name == "symbols")
    if name == "gpt2":
        return _gpt2()
    if name == "owt2":
        path = os.environ.get("DOT_OWT2_TOKENIZER") or SHARED_TOKENIZERS / "owt2_tokenizer.json"
        return JsonTokenizer.from_file(path, digits=digits, **OWT2_SPECIALS)
    if Path(name).suffix == ".json":
        return JsonTokenizer.from_file(name, digits=digits, **OWT2_SPECIALS)
    raise TokenizerError(f"unknown tokenizer {name!r}: use char, symbols, owt2, gpt2 or a .json path "
                         "(config key data.tokenizer)")
