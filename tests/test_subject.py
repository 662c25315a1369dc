"""Reading only a subject's tokens: the Reader, `latentqa read --subject`, the server."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from lit_fixtures import build_tiny_decoder, one_line_error

import latentqa.cli as cli
from latentqa.chat import render
from latentqa.cli.serve import shipped_choices
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.loaded import LoadedDecoder
from latentqa.errors import LatentQAError
from latentqa.reader import Reader
from latentqa.server import create_app
from latentqa.server.examples import EXAMPLES, RELATIONS_DECODER

# The subject also occurs in the system prompt, an earlier user turn and the reply after
# the last user turn: only its last occurrence in the last user turn is read.
LONG = [
    {"role": "system", "content": "You are a pirate captain who loves France."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "Tell me about France, then France again."},
    {"role": "assistant", "content": "France is a country."},
]
CASES = [
    (LONG, "France"),
    (LONG[:4], "France again"),
    ([{"role": "user", "content": "Tell me about the sea."}], "the sea"),
    ([{"role": "user", "content": "Hello, how are you today?"}], "Hello"),
    ([{"role": "user", "content": "What is the capital of France?"}], "?"),
    (LONG[:2], "capital of France"),
]
COUNTRY = [{"role": "user", "content": "Tell me about France."}]
QUESTION = "What is the capital of this country?"
TOKENS = 3


def bare_reader(model, tokenizer) -> Reader:
    """The tiny target reading two layers, every position kept, no adapter."""
    n = model.config.num_hidden_layers
    spec = DecoderSpec(
        target="tiny",
        read_layers=[1, n - 1],
        write_layer=0,
        mode="replace",
        max_read_tokens=4096,
        hidden_size=model.config.hidden_size,
        n_layers=n,
    )
    return Reader(LoadedDecoder.from_model(model, tokenizer, spec))


def subject_positions(tokenizer, dialog, subject) -> list[int]:
    """Token positions overlapping the subject's last occurrence in the last user turn."""
    text = render(tokenizer, dialog, dialog[-1]["role"] != "assistant")
    turn = [m for m in dialog if m["role"] == "user"][-1]["content"]
    start = text.rfind(turn) + turn.rfind(subject)
    end = start + len(subject)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [i for i, (a, b) in enumerate(offsets["offset_mapping"]) if a < end and b > start]


@pytest.mark.parametrize(("dialog", "subject"), CASES)
def test_subject_read_is_the_full_read_at_the_subject_positions(tiny, dialog, subject):
    reader = bare_reader(*tiny)
    positions = subject_positions(reader.tokenizer, dialog, subject)
    assert positions
    full = reader.read(dialog)  # [n_read_layers * kept, d_model], layer-major
    read_start = reader.encode(dialog).read_start
    n_layers = len(reader.spec.read_layers)
    by_layer = full.reshape(n_layers, -1, full.shape[-1])
    expected = by_layer[:, [p - read_start for p in positions]].reshape(-1, full.shape[-1])
    got = reader.read(dialog, subject=subject)
    assert got.shape == (n_layers * len(positions), reader.hidden_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # One read layer instead; a batch of dialogs with one subject each.
    one = reader.read(dialog, layer=1, subject=subject)
    torch.testing.assert_close(one, expected[: len(positions)], atol=1e-5, rtol=1e-4)
    many = reader.read_many([dialog, COUNTRY], subject=[subject, "France"])
    torch.testing.assert_close(many[0], got, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(many[1], reader.read(COUNTRY, subject="France"))


@pytest.mark.parametrize(
    ("dialog", "subject", "message"),
    [
        (LONG, "pirate", "does not occur in the dialog's last user turn"),  # system only
        (LONG, "Paris", "does not occur in the dialog's last user turn"),  # earlier turns
        (LONG, "country", "does not occur in the dialog's last user turn"),  # the reply
        (COUNTRY, "france", "does not occur in the dialog's last user turn"),  # case
        (COUNTRY, "", "must be non-empty text"),
        (COUNTRY, "  ", "must be non-empty text"),
    ],
)
def test_a_subject_not_in_the_last_user_turn_is_refused(tiny, dialog, subject, message):
    reader = bare_reader(*tiny)
    with pytest.raises(LatentQAError, match=message) as error:
        reader.read(dialog, subject=subject)
    assert "\n" not in str(error.value)
    if subject.strip():
        assert "leave the subject out" in str(error.value)


def test_raw_spans_are_the_targets_hidden_states_at_the_read_tokens(tiny):
    reader = bare_reader(*tiny)
    dialogs, subjects = [COUNTRY, CASES[0][0]], ["France", None]
    spans = reader.read_spans(dialogs, [0, 1], batch_size=1, subject=subjects)
    for dialog, subject, span in zip(dialogs, subjects, spans, strict=True):
        encoded = reader.encode(dialog, subject)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            hidden = reader.model(ids, output_hidden_states=True).hidden_states
        where = slice(encoded.read_start, None)
        # hidden_states[k + 1] is block k's output (but the last, which is normed):
        # [1, seq, d_model] -> [span, d_model] per layer
        expected = torch.stack([hidden[1][0, where], hidden[2][0, where]])
        assert span.shape == expected.shape
        torch.testing.assert_close(span, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(LatentQAError, match="1 subjects for 2 dialogs"):
        reader.read_spans(dialogs, [0], subject=["France"])


def test_one_subject_per_dialog_or_one_for_all(tiny):
    reader = bare_reader(*tiny)
    with pytest.raises(LatentQAError, match="2 subjects for 1 dialogs"):
        reader.read_many([COUNTRY], subject=["France", "France"])
    both = reader.read_many([COUNTRY, COUNTRY], subject="France")
    torch.testing.assert_close(both[0], both[1])
    mixed = reader.read_many([COUNTRY, COUNTRY], subject=["France", None])
    torch.testing.assert_close(mixed[1], reader.read(COUNTRY))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    model, decoder = build_tiny_decoder(tmp_path_factory.mktemp("subject"))
    return {"model": str(model), "decoder": str(decoder)}


@pytest.fixture(scope="module")
def reader(paths) -> Reader:
    return Reader.load(paths["model"], paths["decoder"], device="cpu")


def test_ask_and_evidence_read_the_subject(reader):
    vectors = reader.read(COUNTRY, subject="France")
    assert len(vectors) < len(reader.read(COUNTRY))
    answers = reader.ask(COUNTRY, QUESTION, max_new_tokens=TOKENS, subject="France")
    assert answers == reader.ask_vectors(vectors, QUESTION, max_new_tokens=TOKENS)
    weighed = reader.ask(
        COUNTRY, [QUESTION], max_new_tokens=TOKENS, subject="France", evidence=True
    )
    assert [a.text for a in weighed] == answers
    (expected,) = reader.evidence_vectors([vectors], [QUESTION], answers)
    assert weighed[0].evidence == pytest.approx(expected.evidence, abs=1e-4)
    many = reader.ask_many(
        [COUNTRY, COUNTRY],
        [QUESTION],
        max_new_tokens=TOKENS,
        subject=["France", None],
        evidence=True,
    )
    assert [a.text for a in many[0]] == answers
    assert [a.text for a in many[1]] == reader.ask(COUNTRY, QUESTION, max_new_tokens=TOKENS)
    scores = reader.score(COUNTRY, QUESTION, ["Paris", "Rome"], subject="France")
    assert scores == pytest.approx(reader.score_vectors(vectors, QUESTION, ["Paris", "Rome"]))
    with pytest.raises(LatentQAError, match="last user turn"):
        reader.ask(COUNTRY, QUESTION, subject="Japan")


def _main(monkeypatch, argv: list[str]) -> int:
    if "read" not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, "read"])
    return cli.main(argv)


def test_cli_subject(paths, reader, monkeypatch, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["read", "--user", "Tell me about France.", "-q", "Q?"])
    assert args.subject is None
    args = parser.parse_args(["read", "--subject", "France", "--user", "x", "-q", "Q?"])
    assert args.subject == "France"
    with pytest.raises(SystemExit):
        parser.parse_args(["read", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--subject TEXT read only the tokens of TEXT" in usage
    assert "shipped:relations (reads facts about a country" in usage
    common = ["--target", paths["model"], "--decoder", paths["decoder"], "--device", "cpu"]
    argv = ["read", "--user", "Tell me about France.", "--subject", "France", "-q", QUESTION]
    argv += ["--max-new-tokens", str(TOKENS), "--json", *common]
    assert _main(monkeypatch, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["subject"] == "France"
    (answer,) = report["results"][0]["answers"]
    (expected,) = reader.ask(
        COUNTRY, [QUESTION], max_new_tokens=TOKENS, subject="France", evidence=True
    )
    assert answer["answer"] == expected.text
    assert answer["evidence"] == pytest.approx(expected.evidence, abs=1e-4)
    argv = ["read", "--user", "Tell me about France.", "--subject", "Spain", "-q", QUESTION]
    code = _main(monkeypatch, [*argv, *common])
    one_line_error(capsys, code, r"'Spain' does not occur in the dialog's last user turn")


def test_serve_offers_the_shipped_decoders_of_the_embedded_model_only(paths):
    assert shipped_choices(paths["model"]) == []
    assert "shipped:default" in shipped_choices("smollm2-135m")


class Counting:
    """A reader factory that counts its calls (the lazily loaded second decoder)."""

    def __init__(self, reader: Reader) -> None:
        self.reader, self.calls = reader, 0

    def __call__(self) -> Reader:
        self.calls += 1
        return self.reader


@pytest.fixture(scope="module")
def other(paths) -> Reader:
    """A second decoder: the tiny target reading itself without adapters (another answer)."""
    return Reader.base(paths["model"], read_layers=[1], device="cpu")


def test_server_reads_a_subject_with_the_chosen_decoder(reader, other):
    factory = Counting(other)
    app = create_app(reader=reader, decoders={RELATIONS_DECODER: factory})
    body = {"dialog": COUNTRY, "questions": [QUESTION], "max_new_tokens": TOKENS}
    with TestClient(app) as client:
        health = client.get("/api/health").json()
        assert health["decoders"] == ["default", RELATIONS_DECODER]
        titles = [e["title"] for e in client.get("/api/examples").json()]
        assert "Country fact" in titles
        plain = client.post("/api/ask", json=body).json()
        assert plain["decoder"] == "default"
        assert plain["answers"] == reader.ask(COUNTRY, [QUESTION], max_new_tokens=TOKENS)
        read = client.post("/api/ask", json={**body, "subject": "France"}).json()
        assert read["answers"] == reader.ask(
            COUNTRY, [QUESTION], max_new_tokens=TOKENS, subject="France"
        )
        assert factory.calls == 0  # not loaded until chosen
        for _ in range(2):
            response = client.post(
                "/api/ask", json={**body, "subject": "France", "decoder": RELATIONS_DECODER}
            )
            assert response.status_code == 200, response.text
            chosen = response.json()
            assert chosen["decoder"] == RELATIONS_DECODER and chosen["read_layers"] == [1]
            assert chosen["answers"] == other.ask(
                COUNTRY, [QUESTION], max_new_tokens=TOKENS, subject="France"
            )
        assert factory.calls == 1  # loaded once, then cached
        scored = client.post(
            "/api/score",
            json={
                "dialog": COUNTRY,
                "question": QUESTION,
                "answers": ["Paris"],
                "subject": "France",
                "decoder": RELATIONS_DECODER,
            },
        ).json()
        expected = other.score(COUNTRY, QUESTION, ["Paris"], subject="France")
        assert scored["scores"] == pytest.approx(expected, abs=1e-4)
        layered = client.post(
            "/api/layer-scores",
            json={
                "dialog": COUNTRY,
                "question": QUESTION,
                "answers": ["Paris"],
                "subject": "France",
                "layers": [0, 2],
            },
        ).json()
        by_layer = [
            reader.score(COUNTRY, QUESTION, ["Paris"], True, layer, subject="France")[0]
            for layer in (0, 2)
        ]
        assert [row[0] for row in layered["scores"]] == pytest.approx(by_layer, abs=1e-4)
        assert layered["read_layers"] == [2]
        missing = client.post("/api/ask", json={**body, "subject": "Japan"})
        assert missing.status_code == 400 and "last user turn" in missing.json()["error"]
        unknown = client.post("/api/ask", json={**body, "decoder": "nope"})
        assert unknown.status_code == 400
        assert "choose one of default, shipped:relations" in unknown.json()["error"]
        blank = client.post("/api/ask", json={**body, "subject": " "})
        assert blank.status_code == 422


def test_server_without_the_relations_decoder_hides_its_example(reader):
    with TestClient(create_app(reader=reader, decoder_name="my-decoder")) as client:
        health = client.get("/api/health").json()
        assert health["decoders"] == ["my-decoder"]
        titles = [e["title"] for e in client.get("/api/examples").json()]
        assert "Country fact" not in titles and "Hidden persona" in titles
        body = {"dialog": COUNTRY, "questions": [QUESTION], "max_new_tokens": TOKENS}
        for name in ("default", "my-decoder"):
            response = client.post("/api/ask", json={**body, "decoder": name})
            assert response.status_code == 200 and response.json()["decoder"] == "my-decoder"


def test_country_fact_example_reads_japan_with_the_relations_decoder():
    (example,) = [e for e in EXAMPLES if e.title == "Country fact"]
    assert example.decoder == RELATIONS_DECODER and example.subject == "Japan"
    assert example.dialog[-1].content == "Tell me about Japan." and example.answer == "Tokyo"
    assert example.questions[0] == QUESTION
