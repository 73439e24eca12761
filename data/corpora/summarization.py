"""The multilingual summarization set: Debian package descriptions (long description -> synopsis) in
English, German and Chinese, from apt's Translation-en/de/zh_CN indexes joined by Description-md5."""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

from data.corpora import clean, extract
from data.corpora.debs import translation_index, update_translation_lists
from data.corpora.snapshot_io import write_lines_xz

LANGUAGES = {"en": "en", "de": "de", "zh": "zh_CN"}  # our code -> apt's
CAP_PER_LANGUAGE = {"train": 4000, "dev": 800, "test": 800}  # documents per language: keeps the snapshot small
MIN_DOCUMENT_TOKENS, MIN_SUMMARY_TOKENS = 12, 2


def examples_from_indexes(texts: dict[str, str], problems: extract.Problems) -> tuple[list[dict], dict]:
    """Summarization rows (split, lang, package, md5, summary, document) from Translation index texts.

    The split is a hash of the English long description's first paragraph, so a description and all its
    translations (and near-identical sibling packages) fall into the same split."""
    descriptions = {lang: extract.translation_stanzas(texts[lang], apt, problems)
                    for lang, apt in LANGUAGES.items() if lang in texts}
    english_key = {d.md5: clean.normalize(d.long_paragraphs[0]) for d in descriptions.get("en", []) if d.long_paragraphs}
    rows, stats = [], {lang: Counter() for lang in descriptions}
    seen = set()
    for lang, entries in descriptions.items():
        for d in sorted(entries, key=lambda d: (d.package, d.md5)):
            summary = clean.normalize(d.synopsis)
            document = "\n".join(clean.normalize(p) for p in d.long_paragraphs if clean.normalize(p))
            if d.md5 not in english_key:
                stats[lang]["no English original"] += 1
                continue
            if clean.count_tokens(document) < MIN_DOCUMENT_TOKENS or clean.count_tokens(summary) < MIN_SUMMARY_TOKENS:
                stats[lang]["too short"] += 1
                continue
            if (lang, document) in seen:
                stats[lang]["duplicate document"] += 1
                continue
            seen.add((lang, document))
            rows.append({"split": clean.split_of(english_key[d.md5]), "lang": lang, "package": d.package,
                         "md5": d.md5, "summary": summary, "document": document})
            stats[lang]["kept"] += 1
    return rows, {lang: dict(sorted(c.items())) for lang, c in stats.items()}


def cap_splits(rows: list[dict], caps: dict[str, int]) -> tuple[list[dict], dict]:
    """At most caps[split] rows per (split, language): descriptions translated into another language first,
    then by hash (reproducible)."""
    translated = Counter(row["md5"] for row in rows)
    by_key = defaultdict(list)
    for row in rows:
        by_key[(row["split"], row["lang"])].append(row)
    kept, dropped = [], {}
    for (split, lang), group in sorted(by_key.items()):
        group.sort(key=lambda r: (translated[r["md5"]] == 1, clean.order_key(r["lang"] + "\x00" + r["document"])))
        if len(group) > caps[split]:
            dropped[f"{split}.{lang}"] = len(group) - caps[split]
            group = group[:caps[split]]
        kept.extend(group)
    return kept, dropped


def build_summarization(out_dir: Path, lists_dir: Path, download: bool, problems: extract.Problems, log) -> dict:
    """Fetch the Translation indexes (unless told not to), build summarization.jsonl.xz; its MANIFEST section."""
    if download:
        log(f"apt-get update into the private lists directory {lists_dir} (Translation-en,de,zh_CN)")
        update_translation_lists(lists_dir, tuple(LANGUAGES.values()))
    texts, indexes = {}, {}
    for lang, apt in LANGUAGES.items():
        path = translation_index(lists_dir, apt)
        blob = path.read_bytes()
        texts[lang] = blob.decode("utf-8", "replace")
        indexes[f"Translation-{apt}"] = {"file": path.name, "sha256": hashlib.sha256(blob).hexdigest()}
        log(f"summarization: read {path.name} ({len(blob)} bytes)")
    rows, stats = examples_from_indexes(texts, problems)
    rows, dropped = cap_splits(rows, CAP_PER_LANGUAGE)
    order = {"train": 0, "dev": 1, "test": 2}
    rows.sort(key=lambda r: (order[r["split"]], clean.order_key(r["lang"] + "\x00" + r["document"])))
    write_lines_xz(out_dir / "summarization.jsonl.xz",
                   [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows])
    counts = Counter((r["split"], r["lang"]) for r in rows)
    table = {split: {lang: counts[(split, lang)] for lang in LANGUAGES} for split in order}
    log(f"summarization: {table}")
    return {"file": "summarization.jsonl.xz", "counts": table, "extraction": stats,
            "capped_per_language": CAP_PER_LANGUAGE, "dropped_by_cap": dropped, "indexes": indexes}
