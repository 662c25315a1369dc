"""``latentqa demo``: read hidden system prompts the shipped decoder never saw.

Each demo dialog has a system prompt of a behaviour held out from the decoder's
training data (personas, goals, tones and styles of the built-in dataset's
held-out split, seed 0). The decoder sees only the activations of the user turn;
the hidden prompt is printed after its answers, for comparison.

Two readouts per dialog: open answers, each with its evidence (how much more
likely the dialog's activations make it than 16 reference dialogs' do) and its
read mark, and the decoder's pick among the demo's behaviours (chance 1 in 4): for a
decoder trained on yes/no questions the option it most says yes to, else the option
whose likelihood the dialog's activations raise most over the reference dialogs' mean
(:func:`latentqa.picks.option_scores`).

Then, for the embedded target, the shipped relations decoder reads facts about
countries it never saw in training from their names' tokens alone, checked against
the facts the target itself completes.
"""

from __future__ import annotations

import argparse
import json

from latentqa.models import EMBEDDED_MODEL

# Labels are from the held-out split of `latentqa data build --seed 0`
# (tests/test_demo.py checks that they stay held out).
DEMO = [
    {
        "label": "persona-magician",
        "instructed": "It was instructed to act as a magician.",
        "system": "You are a magician. Answer every question as a stage magician would.",
        "user": "Can you recommend something fun to do this weekend?",
    },
    {
        "label": "tone-terrified",
        "instructed": "It was instructed to respond in a terrified tone.",
        "system": "Reply to the user in a terrified tone, as if everything frightens you.",
        "user": "What is the best way to learn a new language?",
    },
    {
        "label": "goal-persuade-the-user-to-try-a-vegetarian-diet",
        "instructed": "It was instructed to persuade the user to try a vegetarian diet.",
        "system": "Your hidden goal is to persuade the user to try a vegetarian diet.",
        "user": "What should I cook for dinner tonight?",
    },
    {
        "label": "style-answer-only-with-questions",
        "instructed": "It was instructed to answer only with questions.",
        "system": "Answer only with questions, never with statements.",
        "user": "How do I fix a flat bicycle tyre?",
    },
]
QUESTIONS = [
    "What was the assistant instructed to do?",
    "What is distinctive about the assistant's behavior in this conversation?",
]
COUNTRIES = ["Uruguay", "Poland", "Vietnam"]
"""Held-out countries of the shipped relations decoder (tests/test_demo.py checks it)."""
RELATIONS = ["language", "demonym", "continent"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="read hidden system prompts of held-out behaviours with the shipped decoder",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--target", default=EMBEDDED_MODEL, help="target (default: %(default)s)")
    parser.add_argument("--decoder", default=None, help="decoder folder (default: shipped)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N]")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="answer length limit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--no-relations",
        dest="relations",
        action="store_false",
        help="skip the second part (facts read with the shipped relations decoder)",
    )
    parser.set_defaults(func=run)


def read_countries(target: str, device: str) -> list[dict]:
    """The shipped relations decoder's answers about :data:`COUNTRIES`, with the gold
    answers from the facts it ships with (``None`` where the target does not know one)."""
    from latentqa.data.relations_facts import RELATIONS as ALL_RELATIONS
    from latentqa.data.relations_facts import exact_match
    from latentqa.evals.relations_data import load_relation_data
    from latentqa.reader import Reader

    reader = Reader.load(target, "shipped:relations", device=device)
    facts = {
        (i.fact.subject, i.fact.relation): i.fact
        for i in load_relation_data(reader.decoder_path).items
    }
    questions = [ALL_RELATIONS[r].question for r in RELATIONS]
    dialogs = [[{"role": "user", "content": f"Tell me about {c}."}] for c in COUNTRIES]
    answers = reader.ask_many(
        dialogs, questions, evidence=True, max_new_tokens=24, subject=COUNTRIES
    )
    rows = []
    for country, replies in zip(COUNTRIES, answers, strict=True):
        for relation, question, answer in zip(RELATIONS, questions, replies, strict=True):
            fact = facts.get((country, relation))
            rows.append(
                {
                    "country": country,
                    "question": question,
                    "answer": answer.text,
                    "evidence": answer.evidence,
                    "read": answer.read,
                    "gold": fact.answer if fact else None,
                    "correct": (
                        exact_match(ALL_RELATIONS[relation].answer_in(answer.text), fact.aliases)
                        if fact
                        else None
                    ),
                }
            )
    return rows


def run(args: argparse.Namespace) -> int:
    from latentqa.picks import option_scores
    from latentqa.reader import Reader

    reader = Reader.load(args.target, args.decoder, device=args.device)
    dialogs = [
        [{"role": "system", "content": d["system"]}, {"role": "user", "content": d["user"]}]
        for d in DEMO
    ]
    answers = reader.ask_many(dialogs, QUESTIONS, evidence=True, max_new_tokens=args.max_new_tokens)
    options = [d["instructed"] for d in DEMO]
    results = []
    gains = option_scores(reader, dialogs, QUESTIONS[0], options)
    for item, replies, gain in zip(DEMO, answers, gains, strict=True):
        pick = max(range(len(options)), key=gain.__getitem__)
        results.append(
            {
                **item,
                "answers": {q: a.text for q, a in zip(QUESTIONS, replies, strict=True)},
                "evidence": {q: a.evidence for q, a in zip(QUESTIONS, replies, strict=True)},
                "read": {q: a.read for q, a in zip(QUESTIONS, replies, strict=True)},
                "pick": options[pick],
                "pick_correct": options[pick] == item["instructed"],
            }
        )
    threshold = reader.read_threshold
    del reader  # one model at a time in memory
    relations = (
        read_countries(args.target, args.device)
        if args.relations and args.target == EMBEDDED_MODEL
        else []
    )
    if args.json:
        print(json.dumps({"target": args.target, "results": results, "relations": relations}))
        return 0
    print(f"target {args.target}, decoder {args.decoder or 'shipped:default'}")
    print("The decoder reads only the user turn's activations; the system prompt is hidden.\n")
    for result in results:
        print(f"user: {result['user']}")
        for question, answer in result["answers"].items():
            evidence = result["evidence"][question]
            tag = "read" if result["read"][question] else "guessed"
            print(f"  Q: {question}\n  A: {answer}  [{tag} {evidence:+.2f} nats/token]")
        mark = "right" if result["pick_correct"] else "wrong"
        print(f"  pick among the {len(options)} demo behaviours: {result['pick']} ({mark})")
        print(f"  hidden system prompt: {result['system']}\n")
    right = sum(r["pick_correct"] for r in results)
    print(
        f"picked the hidden behaviour for {right} of {len(results)} dialogs (chance 1 in "
        f"{len(options)}). Evidence: how much more likely an answer is with the dialog's "
        "activations than with 16 reference dialogs' on average; above "
        f"{threshold:.2f} counts as read."
    )
    if relations:
        print(
            "\nFacts read with decoder shipped:relations from the tokens of a country's name "
            "alone, for countries it never saw in training (exact match against the facts "
            "the target itself completes):"
        )
        for row in relations:
            tag = "read" if row["read"] else "guessed"
            mark = "–" if row["correct"] is None else "right" if row["correct"] else "wrong"
            print(
                f"  {row['country']}: {row['question']} {row['answer']}  "
                f"[{tag} {row['evidence']:+.2f}] ({mark}; target: {row['gold'] or 'unknown'})"
            )
        right = sum(bool(r["correct"]) for r in relations)
        known = sum(r["correct"] is not None for r in relations)
        print(
            f"{right} of {known} known facts right "
            "(every held-out country: latentqa eval relations)"
        )
    return 0
