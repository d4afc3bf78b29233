"""The token estimate behind limits, context-window fit and cost estimates: Latin text at about four characters a
token, Chinese, Japanese and Korean at about one a character, other scripts by their UTF-8 bytes. Relations, not
one tokenizer's counts."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_service.tokens import conversation_tokens, estimate_tokens

CJK = [
    "我们明天早上九点在公司门口集合，然后一起坐车去机场。",  # Chinese
    "東京駅から新幹線に乗って、京都まで行きました。",  # Japanese: kanji, hiragana and katakana
    "오늘은 날씨가 좋아서 공원에서 산책을 했습니다.",  # Korean
]
LATIN = [
    "The quick brown fox jumps over the lazy dog.",
    "Le café était très agréable ; nous avons discuté longuement à l’hôtel.",
    "Über den Wolken muß die Freiheit wohl grenzenlos sein — „sagt man“ … für 5 €.",
    "¿Dónde está la estación? Él no lo sabía, señor.",
]
OTHER = [
    "Сегодня хорошая погода, и мы пошли гулять в парк.",  # Cyrillic
    "Σήμερα ο καιρός είναι καλός και πήγαμε βόλτα.",  # Greek
    "اليوم الطقس جميل وذهبنا إلى الحديقة.",  # Arabic
    "आज मौसम अच्छा है और हम पार्क गए।",  # Devanagari
    "วันนี้อากาศดีเราจึงไปเดินเล่นที่สวนสาธารณะ",  # Thai
]


@pytest.mark.parametrize("text", CJK)
def test_chinese_japanese_and_korean_count_about_a_token_a_character(text):
    """A BPE tokenizer spends about a token on each such character, often more; four characters a token would let a
    prompt four times a context window's size through, and price it at a quarter."""
    assert len(text) / 1.5 <= estimate_tokens(text) <= 2 * len(text)
    messages = [{"role": "user", "content": text}]
    assert conversation_tokens(messages) >= len(text) / 1.5, "the context-window check counts it so too"


@pytest.mark.parametrize("text", LATIN)
def test_latin_text_with_accents_and_punctuation_stays_at_four_characters_a_token(text):
    assert estimate_tokens(text) == (len(text) + 3) // 4


@given(st.text(st.characters(max_codepoint=127)))
@settings(max_examples=200, deadline=None)
def test_ascii_text_stays_at_four_characters_a_token(text):
    assert estimate_tokens(text) == (len(text) + 3) // 4


@pytest.mark.parametrize("text", OTHER)
def test_other_scripts_count_more_than_latin_text_of_their_length(text):
    """Byte-level tokenizers start from UTF-8 bytes: two or three for each letter of these scripts (a space or a
    full stop is one, as in Latin text)."""
    assert estimate_tokens(text) >= len(text) / 3 > (len(text) + 3) // 4


@given(st.text(), st.text())
@settings(max_examples=300, deadline=None)
def test_the_estimate_is_a_sum_over_the_characters_rounded_up_once(a, b):
    """Each character counts on its own (so the estimate is linear in the text), whatever is beside it."""
    whole, parts = estimate_tokens(a + b), estimate_tokens(a) + estimate_tokens(b)
    assert parts - 1 <= whole <= parts
    assert (estimate_tokens(a) == 0) == (a == "")


def test_text_that_is_no_valid_unicode_is_still_estimated():
    """A JSON body may carry a lone surrogate ("\\ud800"): counted, not an error."""
    assert estimate_tokens("\ud800 hi") >= estimate_tokens(" hi")
