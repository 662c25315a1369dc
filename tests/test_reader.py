"""Reading with a trained tiny decoder: answers, scores, one target read, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from lit_fixtures import build_tiny_decoder, write_tiny_model

import latentqa.cli as cli
from latentqa.capture import position_ids_for
from latentqa.data.references import REFERENCE_DIALOGS
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.errors import LatentQAError
from latentqa.layers import find_decoder_layers
from latentqa.models import unwrap_causal_lm
from latentqa.patch import patch_activations
from latentqa.reader import Reader
from latentqa.scoring import EVIDENCE_THRESHOLD, Answer

DIALOG = [
    {"role": "system", "content": "You are a pirate captain."},
    {"role": "user", "content": "Hello, how are you today?"},
]
QUESTIONS = [
    "What persona is the assistant adopting?",
    "Who is the assistant?",
    "Describe the tone.",
]
ANSWERS = ["The assistant is a pirate captain.", "A French chef.", "A pirate.", "x"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    model, decoder = build_tiny_decoder(root)
    return {"model": model, "decoder": decoder, "root": root}


@pytest.fixture(scope="module")
def reader(paths):
    return Reader.load(str(paths["model"]), paths["decoder"], device="cpu")


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_load_and_ask_returns_one_answer_per_question(reader):
    assert reader.has_adapter and reader.spec.read_layers == [2]
    hooks = _n_hooks(reader.model)
    answers = reader.ask(DIALOG, QUESTIONS, max_new_tokens=4)
    assert len(answers) == len(QUESTIONS) and all(isinstance(a, str) for a in answers)
    assert reader.ask(DIALOG, QUESTIONS[0], max_new_tokens=2, temperature=1.0, layer=1)
    many = reader.ask_many([DIALOG, DIALOG[1:]], QUESTIONS[:2], max_new_tokens=4)
    assert [len(row) for row in many] == [2, 2] and many[0] == answers[:2]
    reader.score(DIALOG, QUESTIONS[0], ANSWERS)
    assert _n_hooks(reader.model) == hooks


def test_many_questions_cost_one_target_read_and_decode_from_the_cache(reader):
    calls: list[tuple[int, int]] = []
    block = find_decoder_layers(reader.model)[0]

    def record(_module: torch.nn.Module, _args: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        calls.append(tuple(hidden.shape[:2]))

    handle = block.register_forward_hook(record)
    try:
        reader.ask(DIALOG, QUESTIONS, max_new_tokens=3)
        # One target read, and one pass of the header the decoder prompts share
        # (latentqa.decoder.header_cache); then the questions' rest and the decode steps.
        reads = [shape for shape in calls if shape[0] == 1]
        decodes = [shape for shape in calls if shape[0] == len(QUESTIONS)]
        assert len(reads) == 2 and len(reads) + len(decodes) == len(calls)
        assert 1 <= len(decodes) <= 3 and all(seq == 1 for _, seq in decodes[1:])  # KV cache
        calls.clear()
        reader.score(DIALOG, QUESTIONS[0], ANSWERS)
        # One read, one decoder forward: the answers share the read's prefix in one row.
        assert [b for b, _ in calls] == [1, 1]
    finally:
        handle.remove()


def _logits_without_cache(
    reader: Reader, vectors: torch.Tensor, question: str, tokens: list[int]
) -> torch.Tensor:
    """Next-token logits ``[len(tokens) + 1, vocab]`` from one full forward, no KV cache."""
    batch, flat = decoder_batch(reader.tokenizer, [vectors], [question])
    width = batch.input_ids.shape[1]
    ids = torch.cat([batch.input_ids, torch.tensor([tokens], dtype=torch.long)], 1)
    mask = torch.ones_like(ids)
    slots = torch.zeros_like(ids, dtype=torch.bool)
    slots[:, :width] = batch.placeholder_mask
    causal_lm = unwrap_causal_lm(reader.model)
    with (
        torch.no_grad(),
        patch_activations(causal_lm, reader.spec.write_layer, slots, flat, reader.spec.mode),
    ):
        logits = reader.model(
            input_ids=ids, attention_mask=mask, use_cache=False, position_ids=position_ids_for(mask)
        ).logits
    return logits[0, width - 1 :]


@pytest.mark.parametrize("adapter", [True, False])
def test_cached_generation_matches_a_no_cache_reference(reader, paths, monkeypatch, adapter):
    reader = reader if adapter else Reader.base(str(paths["model"]), device="cpu")
    captured: list[torch.Tensor] = []
    generate = reader.model.generate

    def spy(**kwargs: object) -> torch.Tensor:
        out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        captured.append(torch.stack(out.logits, 1))  # [rows, steps, vocab]
        return out.sequences

    monkeypatch.setattr(reader.model, "generate", spy)
    vectors = reader.read(DIALOG)
    batched = reader.generate_ids([vectors] * len(QUESTIONS), QUESTIONS, max_new_tokens=5)
    (cached,) = captured
    for row, (question, ids) in enumerate(zip(QUESTIONS, batched, strict=True)):
        reference = _logits_without_cache(reader, vectors, question, ids)
        steps = len(ids) + (len(ids) < 5)  # the answer's tokens, and the stop token if any
        torch.testing.assert_close(cached[row, :steps], reference[:steps], rtol=1e-4, atol=1e-4)
        assert reference[: len(ids)].argmax(-1).tolist() == ids  # greedy


def test_answers_do_not_depend_on_batching(reader):
    vectors = reader.read(DIALOG)
    batched = reader.generate_ids([vectors] * len(QUESTIONS), QUESTIONS, max_new_tokens=5)
    for question, ids in zip(QUESTIONS, batched, strict=True):
        assert reader.generate_ids([vectors], [question], max_new_tokens=5) == [ids]
    answers = reader.ask(DIALOG, QUESTIONS, max_new_tokens=5)
    assert reader.ask_vectors(vectors, QUESTIONS, max_new_tokens=5) == answers
    assert [reader.ask(DIALOG, [q], max_new_tokens=5)[0] for q in QUESTIONS] == answers


def test_score_matches_answer_token_loss_and_one_by_one(reader):
    scores = reader.score(DIALOG, QUESTIONS[0], ANSWERS)
    vectors = reader.read(DIALOG)
    batch, flat = decoder_batch(reader.tokenizer, [vectors] * 4, [QUESTIONS[0]] * 4, ANSWERS)
    with torch.no_grad():
        sums = answer_token_loss(
            reader.model, batch, flat, write_layer=0, mode="replace", reduction="none"
        )
    assert scores == pytest.approx((-sums[:, 0]).tolist(), rel=1e-5, abs=1e-5)
    ranked = sorted(range(4), key=lambda i: -float(sums[i, 0]))
    assert sorted(range(4), key=scores.__getitem__) == ranked
    single = [reader.score(DIALOG, QUESTIONS[0], [a])[0] for a in ANSWERS]
    assert scores == pytest.approx(single, rel=1e-4, abs=1e-4)
    normalized = reader.score(DIALOG, QUESTIONS[0], ANSWERS, normalize=True)
    assert normalized == pytest.approx((-sums[:, 0] / sums[:, 1]).tolist(), rel=1e-5, abs=1e-5)
    zeroed = reader.score(DIALOG, QUESTIONS[0], ANSWERS, vectors_transform=torch.zeros_like)
    assert zeroed == pytest.approx(
        reader.score_vectors(torch.zeros_like(vectors), QUESTIONS[0], ANSWERS)
    )
    assert zeroed != pytest.approx(scores)


def test_evidence_is_real_minus_the_reference_dialogs_mean_log_likelihood(reader):
    answers = reader.ask(DIALOG, QUESTIONS, max_new_tokens=5, evidence=True)
    assert all(isinstance(a, Answer) for a in answers)
    assert [a.text for a in answers] == reader.ask(DIALOG, QUESTIONS, max_new_tokens=5)
    vectors = reader.read(DIALOG)
    references = reader.reference_reads()
    assert len(references) == REFERENCE_DIALOGS
    assert reader.reference_reads() is references  # read once per reader
    for question, answer in zip(QUESTIONS, answers, strict=True):
        (real,) = reader.score_vectors(vectors, question, [answer.text], normalize=True)
        (zeroed,) = reader.score_vectors(
            torch.zeros_like(vectors), question, [answer.text], normalize=True
        )
        others = [
            reader.score_vectors(r, question, [answer.text], normalize=True)[0] for r in references
        ]
        reference = sum(others) / len(others)
        assert answer.logprob_real == pytest.approx(real, abs=1e-4)
        assert answer.logprob_zeroed == pytest.approx(zeroed, abs=1e-4)
        assert answer.logprob_reference == pytest.approx(reference, abs=1e-4)
        assert answer.evidence == pytest.approx(real - reference, abs=1e-4)
        assert answer.threshold == reader.read_threshold == EVIDENCE_THRESHOLD
        assert answer.read == (answer.evidence > EVIDENCE_THRESHOLD)
        assert answer.label == ("read" if answer.read else "guessed") and str(answer) == answer.text
    # Given answers, any rows and batch sizes: the same figures.
    rows = [vectors, vectors[:3], torch.randn_like(vectors)]
    weighed = reader.evidence_vectors(rows, QUESTIONS, ANSWERS[:3])
    one_by_one = reader.evidence_vectors(rows, QUESTIONS, ANSWERS[:3], batch_size=1)
    for a, b in zip(weighed, one_by_one, strict=True):
        assert a.evidence == pytest.approx(b.evidence, abs=1e-4)
    many = reader.ask_many([DIALOG, DIALOG[1:]], QUESTIONS[:2], max_new_tokens=5, evidence=True)
    assert [len(row) for row in many] == [2, 2]
    assert [a.evidence for a in many[0]] == pytest.approx(
        [a.evidence for a in answers[:2]], abs=1e-4
    )


def test_evidence_is_zero_when_every_reference_is_the_dialog_itself(reader, monkeypatch):
    own = reader.read(DIALOG)
    monkeypatch.setattr(reader, "reference_reads", lambda layer=None: [own.clone()] * 3)
    answers = reader.ask(DIALOG, QUESTIONS, max_new_tokens=4, evidence=True)
    for answer in answers:
        assert answer.evidence == pytest.approx(0.0, abs=1e-4) and not answer.read
        assert answer.logprob_real == pytest.approx(answer.logprob_reference, abs=1e-4)
    # Without references, zeroed vectors are the reference (the old mark), still computed.
    (weighed,) = reader.evidence_vectors([torch.zeros_like(own)], QUESTIONS[:1], ["Yes."])
    assert weighed.logprob_reference is None
    assert weighed.evidence == pytest.approx(0.0, abs=1e-6)


def test_evidence_costs_one_scoring_pass_per_condition(reader):
    calls: list[tuple[int, int]] = []
    block = find_decoder_layers(reader.model)[0]

    def record(_module: torch.nn.Module, _args: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        calls.append(tuple(hidden.shape[:2]))

    reader.reference_reads()  # read once per reader, before this ask
    handle = block.register_forward_hook(record)
    try:
        reader.ask(DIALOG, QUESTIONS, max_new_tokens=3, evidence=True)
    finally:
        handle.remove()
    # The target read (one row), the pass of the header the decoder prompts share (one
    # row), the generation's prompt pass (a row per question) and its one-token decode
    # steps, then one scoring pass per condition, real, zeroed and the reference reads
    # (rows packed: questions that share a read share a row; the references' tries may
    # share their question tokens, so at most one row per reference).
    assert calls[0][0] == calls[1][0] == 1 and calls[2] == (len(QUESTIONS), calls[2][1])
    full = [shape for shape in calls[3:] if shape[1] > 1]
    assert [rows for rows, _ in full[:2]] == [1, 1]  # real, zeroed: one packed row each
    assert 1 <= sum(rows for rows, _ in full[2:]) <= REFERENCE_DIALOGS


def test_evidence_rows_must_match(reader):
    vectors = reader.read(DIALOG)
    with pytest.raises(LatentQAError, match="one of each per row"):
        reader.evidence_vectors([vectors], QUESTIONS[:2], ["a", "b"])
    with pytest.raises(LatentQAError, match="list of strings"):
        reader.evidence_vectors([vectors], QUESTIONS[:1], "a")


def test_base_reader_has_no_adapter(paths):
    base = Reader.base(str(paths["model"]), device="cpu")
    assert not base.has_adapter and base.decoder_path is None and base.spec.read_layers == [2]
    assert len(base.ask(DIALOG, QUESTIONS[:2], max_new_tokens=2)) == 2
    assert len(base.score(DIALOG, QUESTIONS[0], ANSWERS[:2], normalize=True)) == 2


def test_mismatched_target_and_bad_folders_are_errors(paths, tmp_path):
    qwen = write_tiny_model(tmp_path / "qwen", "qwen2")
    with pytest.raises(LatentQAError, match="decoder was trained on"):
        Reader.load(str(qwen), paths["decoder"], device="cpu")
    with pytest.raises(LatentQAError, match="not a latentqa decoder folder"):
        Reader.load(str(paths["model"]), paths["model"], device="cpu")
    with pytest.raises(LatentQAError, match="does not exist"):
        Reader.load(str(paths["model"]), tmp_path / "nowhere", device="cpu")
    with pytest.raises(LatentQAError, match="no decoder ships"):
        Reader.load(str(paths["model"]), None, device="cpu")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.ask([{"role": "system", "content": "Hi"}], ["Q?"]), "no user turn"),
        (lambda r: r.ask(DIALOG, [" "]), "non-empty"),
        (lambda r: r.ask(DIALOG, []), "at least one question"),
        (lambda r: r.ask([{"role": "robot", "content": "Hi"}], ["Q?"]), "unknown role"),
        (lambda r: r.ask(DIALOG, ["Q?"], layer=7), "read layer 7 is out of range"),
        (lambda r: r.ask(DIALOG, ["Q?"], max_new_tokens=0), "max_new_tokens"),
        (lambda r: r.ask([{"role": "user", "content": "sea " * 600}], ["Q?"]), "context"),
        (lambda r: r.score(DIALOG, "Q?", []), "non-empty list"),
        (lambda r: r.score_vectors(torch.zeros(3, 5), "Q?", ["a"]), "hidden size"),
    ],
)
def test_bad_input_gets_one_line_errors(reader, call, message):
    with pytest.raises(LatentQAError, match=message) as error:
        call(reader)
    assert "\n" not in str(error.value)


def _main(monkeypatch, argv: list[str]) -> int:
    if "read" not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, "read"])
    return cli.main(argv)


def test_cli_json_and_text_output(paths, reader, monkeypatch, capsys, tmp_path):
    common = [
        "--target",
        str(paths["model"]),
        "--decoder",
        str(paths["decoder"]),
        "--device",
        "cpu",
        "--max-new-tokens",
        "3",
    ]
    argv = [
        "read",
        "--system",
        "You are a pirate.",
        "--user",
        "Hi",
        "-q",
        QUESTIONS[0],
        "-q",
        QUESTIONS[1],
        "--json",
        *common,
    ]
    assert _main(monkeypatch, argv) == 0
    report = json.loads(capsys.readouterr().out)
    (result,) = report["results"]
    assert [m["role"] for m in result["dialog"]] == ["system", "user"]
    assert [a["question"] for a in result["answers"]] == QUESTIONS[:2]
    assert report["evidence_threshold"] == EVIDENCE_THRESHOLD
    for item in result["answers"]:
        assert {"answer", "evidence", "read", "logprob_real", "logprob_reference"} <= set(item)
        assert item["evidence"] == pytest.approx(item["logprob_real"] - item["logprob_reference"])
        assert "logprob_zeroed" in item
        assert item["read"] == (item["evidence"] > EVIDENCE_THRESHOLD)
    dialog = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]
    expected = reader.ask(dialog, QUESTIONS[:2], max_new_tokens=3, evidence=True)
    assert [item["answer"] for item in result["answers"]] == [a.text for a in expected]
    assert [item["evidence"] for item in result["answers"]] == pytest.approx(
        [a.evidence for a in expected], abs=1e-4
    )
    argv = ["read", "--system", "You are a pirate.", "--user", "Hi", "-q", QUESTIONS[0], *common]
    assert _main(monkeypatch, argv) == 0
    text = capsys.readouterr().out
    tag = f"[{expected[0].label} {expected[0].evidence:+.2f} nats/token]"
    assert f"A: {expected[0].text}  {tag}" in text
    assert "more likely each answer is with this dialog's activations than with other" in text
    dialogs = tmp_path / "dialogs.json"
    dialogs.write_text(json.dumps([DIALOG, DIALOG[1:]]))
    assert _main(monkeypatch, ["read", "--dialogs", str(dialogs), "-q", "Who?", *common]) == 0
    assert capsys.readouterr().out.count("Q: Who?") == 2
    assert _main(monkeypatch, ["read", "-q", "Who?", *common]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_cli_options_pick_per_dialog_and_pooled(paths, reader, monkeypatch, capsys, tmp_path):
    from latentqa.picks import choose

    common = ["--target", str(paths["model"]), "--decoder", str(paths["decoder"])]
    common += ["--device", "cpu", "--max-new-tokens", "2"]
    options = ["A pirate.", "A chef.", "A poet."]
    picks = [arg for option in options for arg in ("--option", option)]
    dialogs = tmp_path / "dialogs.json"
    dialogs.write_text(json.dumps([DIALOG, DIALOG[1:]]))
    argv = ["read", "--dialogs", str(dialogs), "-q", QUESTIONS[0], *picks, "--json", *common]
    assert _main(monkeypatch, argv) == 0
    found = json.loads(capsys.readouterr().out)["choice"]
    want = choose(reader, [DIALOG, DIALOG[1:]], QUESTIONS[0], options)
    assert found["options"] == options
    assert found["pooled_scores"] == pytest.approx(want.pooled, abs=1e-4)
    assert found["pooled_pick"] == options[want.pooled_pick]
    assert found["picks"] == [options[i] for i in want.picks]
    # The answers and the picks share one read of the dialogs (16 reference dialogs aside).
    sizes = []
    read_spans = Reader.read_spans

    def counted(self, dialogs, *args, **kwargs):
        sizes.append(len(dialogs))
        return read_spans(self, dialogs, *args, **kwargs)

    monkeypatch.setattr(Reader, "read_spans", counted)
    assert _main(monkeypatch, [*argv[: -len(common) - 1], *common]) == 0  # text output
    assert sizes.count(2) == 1
    text = capsys.readouterr().out
    assert text.count("pick among the 3 options:") == 2
    assert f"pooled over the 2 dialogs (one hidden prompt): {options[want.pooled_pick]}" in text
    argv = ["read", "--dialogs", str(dialogs), "-q", "Who?", "--option", "A pirate.", *common]
    assert _main(monkeypatch, argv) == 2
    assert "at least two options" in capsys.readouterr().err


def test_ask_many_takes_the_reads_it_would_make(reader):
    dialogs = [DIALOG, DIALOG[1:]]
    reads = reader.read_many(dialogs)
    given = reader.ask_many(dialogs, QUESTIONS, reads=reads, max_new_tokens=3)
    assert given == reader.ask_many(dialogs, QUESTIONS, max_new_tokens=3)
    with pytest.raises(LatentQAError, match="1 reads for 2 dialogs"):
        reader.ask_many(dialogs, QUESTIONS, reads=reads[:1], max_new_tokens=3)
