
import pytest

from conftest import shared_file
from dot.tokenization import CharTokenizer, JsonTokenizer, TokenizerError, load_tokenizer


def test_owt2_special_ids_and_digit_mode(monkeypatch):
    monkeypatch.setenv("DOT_OWT2_TOKENIZER", str(shared_file("tokenizers", "owt2_tokenizer.json")))
    plain, digit = load_tokenizer("owt2"), load_tokenizer("owt2", digits=True)
    assert (plain.eos_id, plain.sep_id, plain.pad_id, plain.vocab_size) == (0, 32021, 25670, 32768)
    assert plain.mask_id == 32768
    assert plain.encode("This is 1+11=12") == [1116, 321, 406, 11, 1970, 29, 2100]
    assert digit.encode("This is 1+11=12") == [1116, 321, 221, 17, 11, 17, 17, 29, 17, 18]
    assert digit.encode("||") == [92, 92] and digit.encode("####") == [10946]


def test_gpt2_special_ids(monkeypatch):
    monkeypatch.setenv("DOT_GPT2_TOKENIZER", str(shared_file("tokenizers", "gpt2_tokenizer.json")))
    tok = load_tokenizer("gpt2")
    assert (tok.eos_id, tok.pad_id, tok.sep_id, tok.mask_id) == (50256, 50256, 15886, 50257)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("####") == [4242] and tok.encode(" ####") == [1303, 21017]
    assert tok.decode([15496, 995, 50256, 15886]) == "Hello world<|endoftext|>||"


def test_char_tokenizer_round_trip_and_specials():
    tok = CharTokenizer()
    text = "9 1 7 3 * 9 4 3 3 = 1 7 4 3 3 + <<3+4=7>> #### -1,000."
    assert tok.decode(tok.encode(text)) == text
    assert len({tok.pad_id, tok.sep_id, tok.eos_id, tok.unk_id}) == 4
    assert tok.mask_id == tok.vocab_size
    assert tok.encode("é") == [tok.unk_id]


def test_tokenizer_without_special_tokens_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tiny.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tiny.json"
    tiny.save(str(path))
    with pytest.raises(TokenizerError, match="sep string .* is not a single token"):
        JsonTokenizer.from_file(path, eos="a", sep="x y", pad="b")
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer("bert")


def test_symbols_tokenizer_drops_spaces_and_keeps_answers():
    from dot.tasks import format_example, get_task

    tok = load_tokenizer("symbols")
    task = get_task("mult3x3")
    ex = task.make_example(0, *format_example(123, 456, 3, 3).split("||"))
    ids = [tok.encode(t) for t in ex.thoughts]
    assert all(tok.decode([i]) != " " for t in ids for i in t)
    assert len(tok.encode(ex.prompt)) == 8  # '3 2 1 * 6 5 4 = ' -> 8 symbols
    text = "".join(tok.decode(t) for t in ids)
    assert task.extract_answer(text) == task.gold_answer(ex) == "8 8 0 6 5 0"
