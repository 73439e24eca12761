"""Normalisation, pair filters and the deterministic hash split shared by builder, loaders and tests."""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_CHARS = 600  # longer texts are dropped from the parallel corpora ("cap the length")
MIN_RATIO, MAX_RATIO = 0.5, 2.0
DEV_PER_MILLE, TEST_PER_MILLE = 50, 50  # of the hash space: about 5% dev, 5% test
SPLIT_SALT = b"ftscale-corpora-split-v1\x00"

_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")
_CJK = re.compile("[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")
_LETTER = re.compile(r"[^\W\d_]")


def count_tokens(text: str) -> int:
    """Whitespace tokens, counting each CJK character as one token (Chinese has no spaces)."""
    cjk = len(re.findall("[\u3400-\u9fff\uf900-\ufaff]", text))
    return len(re.sub("[\u3400-\u9fff\uf900-\ufaff]", " ", text).split()) + cjk


def normalize(text: str) -> str:
    """NFC, invisible characters removed, every whitespace run (incl. newlines, tabs) -> one space."""
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    return _SPACE.sub(" ", text).strip()


def length_units(text: str) -> float:
    """Length for the ratio filter: characters, a CJK character counting as 3 (about one English word's worth)."""
    cjk = len(_CJK.findall(text))
    return len(text) - cjk + 3 * cjk


def pair_rejection(en: str, xx: str, target_lang: str | None = None) -> str | None:
    """Why a normalised pair is rejected (None = keep): empty, identical, untranslated, too long, bad length ratio."""
    if not en or not xx:
        return "empty side"
    if not _LETTER.search(en) or not _LETTER.search(xx):
        return "no letters"
    if en.casefold() == xx.casefold():
        return "identical sides"
    if target_lang == "zh" and not _CJK.search(xx):
        return "Chinese side has no Chinese characters"
    if len(en) > MAX_CHARS or len(xx) > MAX_CHARS:
        return "too long"
    ratio = length_units(xx) / length_units(en)
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        return "length ratio outside [0.5, 2]"
    return None


def split_of(key: str) -> str:
    """'train' / 'dev' / 'test' from a salted sha256 of the (normalised) key text: stable across builds."""
    bucket = int.from_bytes(hashlib.sha256(SPLIT_SALT + key.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < DEV_PER_MILLE:
        return "dev"
    if bucket < DEV_PER_MILLE + TEST_PER_MILLE:
        return "test"
    return "train"


def order_key(text: str) -> bytes:
    """Deterministic pseudo-random order of rows (so files are shuffled, yet reproducible)."""
    return hashlib.sha256(b"ftscale-order\x00" + text.encode("utf-8")).digest()
