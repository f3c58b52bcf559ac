"""The DoT-MP loop against an oracle backbone that writes the gold next thought."""
import pytest
import torch

from dot.backbone import Backbone, SampleResult
from dot.decoding import Decoding, generate
from dot.evaluate import evaluate
from dot.examples import tokenize
from dot.tasks import format_example, get_task
from dot.tokenization import CharTokenizer

TOK = CharTokenizer()
TASK = get_task("mult2x2")
EXAMPLES = [TASK.make_example(i, *format_example(a, b, 2, 2).split("||"))
            for i, (a, b) in enumerate([(12, 34), (56, 78), (90, 11)])]


class Oracle(Backbone):
    """Writes the gold continuation of whatever prefix it gets; logs batch sizes."""
    name = "oracle"

    def __init__(self, stop_after: int | None = None):
        super().__init__(None, TOK, torch.nn.Linear(1, 1))
        self.batch_sizes: list[int] = []
        self.stop_after = stop_after  # make example 0 never finish (to test max passes)

    @classmethod
    def from_config(cls, cfg, tokenizer):
        raise NotImplementedError

    def loss(self, batch, rng):
        raise NotImplementedError

    def sample(self, input_ids, fixed_mask, steps, generator, record_chain=False, **options):
        self.batch_sizes.append(len(input_ids))
        out = input_ids.clone()
        for row in range(len(out)):
            n = int(fixed_mask[row].sum())
            prefix = TOK.decode(out[row, : n - 1].tolist())
            ex = next(e for e in EXAMPLES if prefix.startswith(e.prompt))
            done = prefix[len(ex.prompt):]
            tex = tokenize(ex, TASK, TOK)
            if ex.task_id == 0 and self.stop_after is not None:
                new = list(tex.thoughts[0])  # repeats its first thought forever
            else:
                k = next(k for k in range(len(ex.thoughts)) if "".join(ex.thoughts[:k]) == done)
                new = list(tex.thoughts[k]) + ([TOK.eos_id] if k == len(ex.thoughts) - 1 else [])
            out[row, n: n + len(new)] = torch.tensor(new)
        return SampleResult(out, nfe=steps, chain=[out.clone()] if record_chain else None)


def _prompts():
    return [list(tokenize(e, TASK, TOK).prompt) for e in EXAMPLES]


def test_multipass_rebuilds_prefix_from_ids_and_finishes_each_example():
    oracle = Oracle()
    gens = generate(oracle, TASK, _prompts(), Decoding(4, multipass=True, max_passes=10),
                    seq_len=64, generator=torch.Generator())
    for g, ex in zip(gens, EXAMPLES):
        assert TOK.decode(g.ids) == "".join(ex.thoughts)
        assert len(g.thoughts) == len(ex.thoughts) and g.finished and g.stop_reason == "eos"
        assert g.nfe == 4 * len(ex.thoughts)
    assert oracle.batch_sizes == [3] * len(EXAMPLES[0].thoughts)


def test_finished_examples_leave_the_batch_and_max_passes_is_respected():
    oracle = Oracle(stop_after=0)
    gens = generate(oracle, TASK, _prompts(), Decoding(2, multipass=True, max_passes=5),
                    seq_len=64, generator=torch.Generator())
    n = len(EXAMPLES[1].thoughts)  # 3 thoughts for 2x2
    assert oracle.batch_sizes == [3] * n + [1] * (5 - n)
    assert gens[0].stop_reason == "max passes" and not gens[0].finished
    assert gens[1].finished and gens[1].nfe == 2 * n


def test_evaluate_writes_records_and_scores(tmp_path):
    oracle = Oracle()
    summary = evaluate(oracle, TASK, EXAMPLES, Decoding(3, multipass=True), seq_len=64,
                       out=tmp_path / "r", runs=2, progress=False)
    assert summary["accuracy"] == 1.0 and summary["sc"] == {1: 1.0, 2: 1.0}
    assert summary["token_acc"] == 1.0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(EXAMPLES)
    assert (tmp_path / "r.summary.json").is_file()


def test_result_names_with_a_dot_keep_their_whole_stem(tmp_path):
    """`...-threshold=0.95` and `...-threshold=0.99` are two files (a swapped suffix once cut
    both names to `...-threshold=0.jsonl`, overwriting one decoding with another)."""
    for value in ("0.95", "0.99"):
        summary = evaluate(Oracle(), TASK, EXAMPLES, Decoding(3, multipass=True), seq_len=64,
                           out=tmp_path / f"test-T3-threshold={value}", progress=False)
        assert summary["results"] == str(tmp_path / f"test-T3-threshold={value}.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test-T3-threshold=0.95.jsonl", "test-T3-threshold=0.95.summary.json",
        "test-T3-threshold=0.99.jsonl", "test-T3-threshold=0.99.summary.json"]


class FlawedOracle(Oracle):
    """The oracle, but thought 1 of example 0 and the last thought of example 2 come out wrong."""
    name = "flawed"

    def sample(self, input_ids, fixed_mask, steps, generator, record_chain=False, **options):
        result = super().sample(input_ids, fixed_mask, steps, generator, record_chain, **options)
        for row in range(len(input_ids)):
            n = int(fixed_mask[row].sum())
            prefix = TOK.decode(input_ids[row, : n - 1].tolist())
            ex = next(e for e in EXAMPLES if prefix.startswith(e.prompt))
            k = next(k for k in range(len(ex.thoughts))
                     if "".join(ex.thoughts[:k]) == prefix[len(ex.prompt):])
            if (ex.task_id, k) in {(0, 1), (2, len(ex.thoughts) - 1)}:
                result.ids[row, n] = TOK.encode("9" if ex.thoughts[k][0] != "9" else "8")[0]
        return result


def test_per_thought_accuracy_charges_each_error_to_its_thought():
    from dot.report.per_thought import per_thought_accuracy
    n = len(EXAMPLES[0].thoughts)
    assert all(len(e.thoughts) == n for e in EXAMPLES)
    # batch 2 splits the examples across calls; the oracle fails on any non-gold prefix, so
    # this also checks that every pass starts from the gold earlier thoughts
    rows = per_thought_accuracy(FlawedOracle(), TASK, EXAMPLES, Decoding(1), seq_len=64,
                                generator=torch.Generator(), batch_size=2)
    expected = [1.0, 2 / 3] + [1.0] * (n - 3) + [2 / 3]
    assert [r["thought"] for r in rows] == list(range(n))
    assert [r["examples"] for r in rows] == [3] * n
    assert [r["exact"] for r in rows] == expected
    # one wrong token in a thought of L tokens costs that example 1/L of its token accuracy
    tokens_1 = 1 - 1 / len(TOK.encode(EXAMPLES[0].thoughts[1])) / 3
    tokens_last = 1 - 1 / len(TOK.encode(EXAMPLES[2].thoughts[-1])) / 3
    assert [r["tokens"] for r in rows] == pytest.approx(
        [1.0, tokens_1] + [1.0] * (n - 3) + [tokens_last])
