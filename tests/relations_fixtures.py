"""Relational facts for tests: a small table and a dataset built from it (no model)."""

from __future__ import annotations

from pathlib import Path

from latentqa.data.relations import Fact, build_relations_dataset

_TABLE = {
    # subject: (capital, currency, region, language)
    "Germany": ("Berlin", "Euro", "Europe", "German"),
    "Japan": ("Tokyo", "Yen", "Asia", "Japanese"),
    "Brazil": ("Brasília", "Real", "Americas", "Portuguese"),
    "France": ("Paris", "Euro", "Europe", "French"),
    "Italy": ("Rome", "Euro", "Europe", "Italian"),
    "Spain": ("Madrid", "Euro", "Europe", "Spanish"),
    "Kenya": ("Nairobi", "Shilling", "Africa", "English"),
    "Peru": ("Lima", "Sol", "Americas", "Spanish"),
    "Chile": ("Santiago", "Peso", "Americas", "Spanish"),
    "Mexico": ("Mexico City", "Peso", "Americas", "Spanish"),
    "China": ("Beijing", "Yuan", "Asia", "Chinese"),
    "South Africa": ("Pretoria", "Rand", "Africa", "English"),
}
RELATION_NAMES = ("capital", "currency", "region", "language")
FACTS = [
    Fact(subject, relation, answer, (answer,))
    for subject, answers in _TABLE.items()
    for relation, answer in zip(RELATION_NAMES, answers, strict=True)
]


def write_relations_data(folder: Path, **options: object) -> Path:
    """Build the dataset from :data:`FACTS` without a knowledge filter."""
    settings = dict(facts=FACTS, relations=list(RELATION_NAMES), heldout_fraction=0.4)
    build_relations_dataset(folder, **{**settings, **options})
    return folder
