"""The corpus builder: Debian packages -> cleaned, split parallel corpora + monolingual corpora + MANIFEST.

`python -m data.corpora build` runs it. Output is byte-for-byte reproducible from the same package
versions: rows are ordered by hashes of their text, files are xz with fixed settings, and the MANIFEST
holds no timestamps.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from data.corpora import clean, extract, sources
from data.corpora.debs import DebInfo, download_debs, find_deb
from data.corpora.snapshot_io import sha256_file, write_atomic, write_lines_xz

MONOLINGUAL_CHAR_CAP = 1_500_000  # length units (CJK char = 3) per (pair, corpus, language): a few MB snapshot
LICENSES = {  # the license of the text we use, from each package's debian/copyright
    "libreoffice-help-en-us": "MPL-2.0", "libreoffice-help-de": "MPL-2.0", "libreoffice-help-zh-cn": "MPL-2.0",
    "libreoffice-l10n-de": "MPL-2.0", "libreoffice-l10n-zh-cn": "MPL-2.0", "trans-de-en": "GPL-2+",
    "gcc-12-locales": "GPL-3+", "debian-reference-en": "GPL-2+", "debian-reference-de": "GPL-2+",
    "debian-reference-zh-cn": "GPL-2+", "krita-l10n": "GPL-and-LGPL (debian/copyright, Files: *)",
    "fortunes": "BSD (fortune-mod)", "fortunes-min": "BSD (fortune-mod)",
    "fortunes-de": "GPL-2+", "manpages-de": "GPL-3+ (translations; original pages under their own licenses)",
    "r-cran-janeaustenr": "MIT (the novels are in the public domain)", "fortunes-zh": "GPL-3+",
}


class _Log:
    def __init__(self, log: Callable[[str], None]):
        self.log, self.start = log, time.monotonic()

    def __call__(self, message: str) -> None:
        self.log(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def _extract_pairs(pair: str, debs: dict[str, DebInfo], problems: extract.Problems,
                   log: _Log) -> list[tuple[str, list[sources.RawPair]]]:
    spec = sources.PAIRS[pair]
    path = {name: info.path for name, info in debs.items()}
    jobs: list[tuple[str, Callable[[], list[sources.RawPair]]]] = [
        (spec.help_package, lambda: sources.help_pairs(path[sources.ENGLISH_HELP], path[spec.help_package],
                                                       spec.help_dir, spec.help_package, problems)),
        (spec.l10n_package, lambda: sources.mo_pairs(path[spec.l10n_package], spec.locale, spec.l10n_package,
                                                     spec.accelerator_marks, problems)),
        (sources.GCC_LOCALES, lambda: sources.mo_pairs(path[sources.GCC_LOCALES], spec.locale,
                                                       sources.GCC_LOCALES, "", problems)),
    ]
    for package in spec.extra_mo_packages:
        jobs.append((package, lambda package=package: sources.mo_pairs(
            path[package], spec.locale, package, spec.accelerator_marks, problems)))
    jobs.append((spec.debref_package, lambda: sources.debref_pairs(
        path[sources.ENGLISH_DEBREF], path[spec.debref_package], spec.debref_suffix, spec.debref_package, problems)))
    if spec.dictionary_package:
        jobs.append((spec.dictionary_package, lambda: sources.ding_pairs(
            path[spec.dictionary_package], spec.dictionary_package, problems)))
    out = []
    for name, job in jobs:
        pairs = job()
        log(f"{pair}: {name}: {len(pairs)} raw pairs")
        out.append((name, pairs))
    return out


def _clean_and_split(extracted, stats: dict, target_lang: str) -> dict[str, list[tuple[str, str, str, str]]]:
    """Normalise, filter, deduplicate (first source wins), hash-split; drop train rows that leak held-out text."""
    seen_en: set[str] = set()
    rows = []
    for name, raw_pairs in extracted:
        source_stats = stats.setdefault(name, {"raw": len(raw_pairs), "rejected": Counter(), "duplicates": 0})
        for raw in raw_pairs:
            en, xx = clean.normalize(raw.en), clean.normalize(raw.xx)
            reason = clean.pair_rejection(en, xx, target_lang)
            if reason:
                source_stats["rejected"][reason] += 1
                continue
            if en in seen_en:
                source_stats["duplicates"] += 1
                continue
            seen_en.add(en)
            rows.append((clean.split_of(en), raw.domain, raw.origin, en, xx))
    held_out = {text for split, _, _, en, xx in rows if split != "train" for text in (en, xx)}
    splits: dict[str, list] = {"train": [], "dev": [], "test": []}
    for split, domain, origin, en, xx in rows:
        if split == "train" and (en in held_out or xx in held_out):
            stats[origin]["rejected"]["shares text with dev/test"] += 1
            continue
        splits[split].append((domain, origin, en, xx))
        stats[origin].setdefault("kept", Counter())[split] += 1
    for split in splits:
        splits[split].sort(key=lambda row: clean.order_key(row[2]))
    for source_stats in stats.values():
        source_stats["rejected"] = dict(sorted(source_stats["rejected"].items()))
        source_stats["kept"] = dict(sorted(source_stats.get("kept", Counter()).items()))
    return splits


def _monolingual(texts_by_source: list[tuple[str, list[str]]], held_out: set[str], cap: int) -> tuple[list[str], dict]:
    """Normalised, deduplicated, leak-free texts, shuffled by hash and capped at `cap` length units."""
    seen, candidates, info = set(), [], {"sources": {}, "dropped_held_out": 0}
    for name, texts in texts_by_source:
        count = 0
        for text in texts:
            text = clean.normalize(text)
            if not text or text in seen:
                continue
            seen.add(text)
            if text in held_out:
                info["dropped_held_out"] += 1
                continue
            candidates.append(text)
            count += 1
        info["sources"][name] = count
    candidates.sort(key=clean.order_key)
    kept, total = [], 0.0
    for text in candidates:
        units = clean.length_units(text)
        if total + units > cap:
            continue
        kept.append(text)
        total += units
    info.update(candidates=len(candidates), lines=len(kept), chars=sum(map(len, kept)),
                tokens=sum(map(clean.count_tokens, kept)), capped_at_length_units=cap, capped=len(kept) < len(candidates))
    return kept, info


def build_pair(pair: str, out_dir: Path, debs: dict[str, DebInfo], problems: extract.Problems,
               log: _Log, monolingual_cap: int = MONOLINGUAL_CHAR_CAP) -> dict:
    """Build one language pair's parallel and monolingual files; returns its MANIFEST section."""
    spec = sources.PAIRS[pair]
    stats: dict = {}
    splits = _clean_and_split(_extract_pairs(pair, debs, problems, log), stats, spec.lang)
    lines = [f"{split}\t{domain}\t{origin}\t{en}\t{xx}" for split in ("train", "dev", "test")
             for domain, origin, en, xx in splits[split]]
    parallel_name = f"parallel.{pair}.tsv.xz"
    write_lines_xz(out_dir / parallel_name, lines)
    counts = {split: dict(sorted(Counter(row[0] for row in rows).items())) | {"total": len(rows)}
              for split, rows in splits.items()}
    log(f"{pair}: parallel train/dev/test = {counts['train']['total']}/{counts['dev']['total']}/{counts['test']['total']}")
    held_out = {text for split in ("dev", "test") for _, _, en, xx in splits[split] for text in (en, xx)}

    path = {name: info.path for name, info in debs.items()}
    software_train = [row for row in splits["train"] if row[0] == sources.SOFTWARE]
    aligned = {
        "en": [("train split software pairs (English side)", [row[2] for row in software_train])],
        spec.lang: [("train split software pairs (%s side)" % spec.lang, [row[3] for row in software_train])],
    }
    if "manpages-de" in spec.monolingual_aligned_packages:
        aligned[spec.lang].append(("manpages-de", sources.manpage_paragraphs(path["manpages-de"])))
    misaligned = {
        "en": [("r-cran-janeaustenr", sources.austen_paragraphs(path["r-cran-janeaustenr"])),
               ("fortunes", sources.fortune_texts(path["fortunes"])),
               ("fortunes-min", sources.fortune_texts(path["fortunes-min"]))],
        spec.lang: [(package, sources.fortune_texts(path[package])) for package in spec.monolingual_misaligned_packages],
    }
    monolingual = {}
    for corpus, by_lang in (("aligned", aligned), ("misaligned", misaligned)):
        for lang, texts in by_lang.items():
            kept, info = _monolingual(texts, held_out, monolingual_cap)
            name = f"mono.{pair}.{corpus}.{lang}.txt.xz"
            write_lines_xz(out_dir / name, kept)
            monolingual[f"{corpus}.{lang}"] = info | {"file": name}
            log(f"{pair}: {corpus} {lang}: {info['lines']} texts, {info['tokens']} tokens"
                + (f" (capped at {monolingual_cap} length units, of {info['candidates']} texts)" if info["capped"] else ""))
    return {"parallel_file": parallel_name, "parallel_counts": counts, "sources": stats, "monolingual": monolingual}


def collect_debs(packages: list[str], debs_dir: Path, download: bool, log: _Log,
                 versions: dict[str, str] | None = None) -> dict[str, DebInfo]:
    """The .deb of every package (pinned to `versions` where given): from `debs_dir`, downloading the
    missing ones with apt unless told not to."""
    if download:
        return download_debs(packages, debs_dir, log, versions)
    found = {p: find_deb(debs_dir, p, (versions or {}).get(p)) for p in packages}
    missing = sorted(p for p, info in found.items() if info is None)
    if missing:
        raise FileNotFoundError(f"--no-download given but {debs_dir} lacks .deb files for: {', '.join(missing)}")
    return found


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """MANIFEST.json (checksums of every other file, sorted keys, no timestamps) and LICENSES.md."""
    packages = manifest["packages"]
    licenses = ["# Sources and licenses of the corpora snapshot", "",
                "Every text in this directory was extracted by `python -m data.corpora build` from these Debian "
                "bookworm packages; each keeps its upstream license (see the package's copyright file).", "",
                "| package | version | license |", "|---|---|---|"]
    licenses += [f"| {name} | {info['version']} | {info['license']} |" for name, info in sorted(packages.items())]
    if manifest.get("translation_indexes"):
        licenses += ["", "Package descriptions (summarization set) come from the Debian archive's Translation-en/de/"
                     "zh_CN indexes (the Debian Description Translation Project; each description is under its "
                     "package's license)."]
    licenses += ["", "## Files", "",
                 "- `parallel.<pair>.tsv.xz`: one pair per line, tab-separated: split (train/dev/test), domain "
                 "(software/everyday), origin (Debian package of the translation), English, the other language.",
                 "- `mono.<pair>.<aligned|misaligned>.<lang>.txt.xz`: pretraining text, one document per line.",
                 "- `summarization.jsonl.xz`: one JSON object per line: split, lang, package, md5, summary, document.",
                 "- `MANIFEST.json`: package versions, licenses, counts, what was capped, skipped input, sha256 of "
                 "every file.", "",
                 "xz (preset 9, CRC64) holds no timestamps, and rows are ordered by hashes of their text, so the "
                 "builder regenerates these files byte-for-byte from the same package versions "
                 "(`python -m data.corpora build --versions-from data/corpora/snapshot/MANIFEST.json`)."]
    write_atomic(out_dir / "LICENSES.md", ("\n".join(licenses) + "\n").encode("utf-8"))
    files = {}
    for path in sorted(out_dir.iterdir()):
        if path.name != "MANIFEST.json" and path.is_file() and not path.name.endswith(".tmp"):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["files"] = files
    write_atomic(out_dir / "MANIFEST.json", (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)
                                             + "\n").encode("utf-8"))
