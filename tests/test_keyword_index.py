"""The in-memory keyword index scores exactly as FTS5's bm25 does, and stays in step with writes."""

from __future__ import annotations

import pytest

import skills
from conftest import FakeEmbedder
from selfmcp import search, skillmd

SKILLS = [
    ("send_email", "Send an email to a recipient with a subject and a body."),
    ("sendSlackMessage", "Post a message to a Slack channel."),
    ("convert_csv_to_json", "Convert a CSV file into JSON records."),
    ("json_pretty", "Pretty-print JSON documents with indentation."),
    ("weather_forecast", "Get the weather forecast for a city, days ahead."),
    ("currency_converter", "Convert amounts between currencies at today's rates."),
    ("translate_text", "Translate text between languages; detects the source language."),
    ("resume_parser", "Parse a résumé (CV) into fields: name, emails, phone numbers."),
    ("stock_quote", "Latest quote of a stock ticker such as AAPL."),
    ("email_validator", "Check that an email address is well formed and its domain has MX records."),
]
QUERIES = ["send an email", "converting csv files", "I want the weather please", "json", "resume parsing",
           "translation of languages", "stock", "emails", "NOT OR \"quoted\" -", "conv", "the and of"]


def fts_ranking(reg: skills.Registry, query: str) -> list[tuple[int, float]]:
    terms = search.fts_terms(query)
    if not terms:
        return []
    with reg.store.read() as tx:
        return [(i, -s) for i, s in tx.keyword_matches(" OR ".join(terms), 200)]


def assert_same_as_fts5(reg: skills.Registry) -> None:
    index = reg.search_index.keywords
    assert index.ready
    for query in QUERIES:
        mine = index.scores(search.query_words(query), 200)
        fts = fts_ranking(reg, query)
        assert [i for i, _ in mine] == [i for i, _ in fts], query
        assert [s for _, s in mine] == pytest.approx([s for _, s in fts], rel=1e-5), query


@pytest.fixture
def registry(tmp_path):
    reg = skills.Registry(tmp_path / "skills.db", FakeEmbedder(), environ={})
    reg.seed_core_skills()
    for name, description in SKILLS:
        reg.create(name, description, "print('ok')")
    assert reg.search_index.keywords.wait_ready(60)  # built in the background, writes meanwhile replayed
    return reg


def test_in_memory_bm25_ranks_and_scores_as_fts5(registry):
    assert len(registry.search_index.keywords) == len(SKILLS) + len(registry.search_index.core_ids)
    assert_same_as_fts5(registry)


def test_updates_and_deletes_are_reflected_at_once(registry):
    found = registry.search("weather", "keyword", 5)["results"]
    registry.update(found[0]["id"], description="Tomorrow's rain and sun for any town.")
    email = registry.search("send an email", "keyword", 5)["results"][0]
    registry.delete(email["id"])
    assert email["id"] not in [r["id"] for r in registry.search("send an email", "keyword", 10)["results"]]
    assert registry.search("rain", "keyword", 5)["results"][0]["id"] == found[0]["id"]
    # a deleted name comes back with new text
    registry.create("send_email", "Deliver electronic mail through SMTP.", "print('ok')")
    assert registry.search("smtp", "keyword", 5)["results"][0]["name"] == "send_email"
    assert_same_as_fts5(registry)


def test_a_reopened_registry_builds_its_index_in_the_background_and_answers_meanwhile(registry):
    reopened = skills.Registry(registry.store.db, FakeEmbedder(), environ={})
    # before or after the build, keyword search answers (FTS5 until the index is ready)
    assert reopened.search("send an email", "keyword", 5)["results"][0]["name"] == "send_email"
    assert reopened.search_index.keywords.wait_ready(60)
    assert_same_as_fts5(reopened)


def test_compaction_keeps_scores_right(registry):
    index = registry.search_index.keywords
    with registry.store.read() as tx:
        rows = tx.texts([skill_id for skill_id, _ in tx.summary_page(0, 100)])
    for round_ in range(150):  # rewrites leave dead rows behind until a third of them is dead
        for row in rows:
            index.upsert(row["id"], (f"name{round_}", "filler words only", ""))
    assert index._rows < 150 * len(rows)  # compacted
    for row in rows:  # back to the real text
        index.upsert(row["id"], search.index_texts(row["name"], row["description"],
                                                   skillmd.parse_body(row["body"]).frontmatter)[0])
    assert_same_as_fts5(registry)
