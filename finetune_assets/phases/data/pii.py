"""PII redaction for dedup_corpus: personal data and secrets are replaced by typed placeholders.

Types and placeholders (PII_TYPES in finetune_assets.config):
- email        [EMAIL]        addresses; reserved example domains (example.com, *.test, ...: RFC 2606/6761)
                              are documentation, not personal data, and stay.
- phone        [PHONE]        strict shapes with separators only: +1 415-555-0132, +44 20 7946 0958,
                              (415) 555-0132, 415-555-0132, 415.555.0132. Bare digit runs, dates and version
                              numbers are never phones.
- ip_address   [IP_ADDRESS]   public addresses only, as datatrove's PIIFormatter does: private, loopback,
                              link-local, multicast, documentation and reserved ranges stay (the stdlib
                              ipaddress module decides). IPv6 only inside the global unicast block 2000::/3.
                              Not addresses: dotted quads whose parts are all below 20 ("3.12.1.4") or that
                              follow a version word or pin ("zlib 1.2.3.4", "novas==3.1.1.3"), numbered
                              headings ("4.2.1.1. Title"), networks ("x/24") and ipaddress example calls.
- credit_card  [CREDIT_CARD]  13-19 digits, contiguous or in the printed groupings (4-4-4-4[-3], 4-6-5) with
                              one kind of separator, that pass the Luhn check.
- secret       [SECRET]       API keys and tokens: AWS access key ids (AKIA/ASIA...), GitHub tokens
                              (ghp_/gho_/ghu_/ghs_/ghr_/github_pat_), OpenAI-style sk-..., Slack xox?-...,
                              Google AIza..., Stripe sk_/rk_ live/test keys, JWTs, PEM private key blocks
                              (with a base64 body: a "... (private key) ..." placeholder in docs stays).

Overlapping matches are resolved by type priority (secret, email, credit_card, ip_address, phone), so a token
is redacted once, under its most specific type. No placeholder matches any pattern: redacting twice is a
no-op.
"""

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from finetune_assets import io
from finetune_assets.config import PII_TYPES, PiiConfig

PLACEHOLDERS = {t: f"[{t.upper()}]" for t in PII_TYPES}

# Conflict resolution order: earlier types win where matches overlap.
_PRIORITY = ("secret", "email", "credit_card", "ip_address", "phone")

# The scan starts at "@" (a literal is found fast); the local part is read backwards from there.
_EMAIL_DOMAIN = re.compile(r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,})(?![\w-])")

_EMAIL_LOCAL_RUN = re.compile(r"[\w.%+-]*\Z")  # everything that could belong to the local part

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}")

_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")

_RESERVED_TLDS = ("example", "test", "invalid", "localhost")


def _public_email(m: re.Match) -> tuple[int, int] | None:
    window_start = max(0, m.start() - 65)
    run = _EMAIL_LOCAL_RUN.search(m.string, window_start, m.start()).group()
    if not _EMAIL_LOCAL.fullmatch(run):
        return None
    domain = m.group(1).lower()
    if domain.rsplit(".", 1)[-1] in _RESERVED_TLDS:
        return None
    if any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS):
        return None
    return m.start() - len(run), m.end()


_PHONE = re.compile(
    r"(?<![\w+.\-/(])(?:"
    # international: +CC then 2-5 groups, each after a separator (a group may be parenthesized)
    r"\+\d{1,3}(?:[ .-]\(?\d{1,4}\)?){2,5}"
    # North American: (415) 555-0132 / 415-555-0132 / 415.555.0132 (one kind of separator)
    r"|\(\d{3}\)[ ]?\d{3}[-.]\d{4}"
    r"|\d{3}([-.])\d{3}\1\d{4}"
    r")(?![\w/]|[.-]\d)"
)


def _plausible_phone(m: re.Match) -> bool:
    digits = sum(c.isdigit() for c in m.group())
    return 10 <= digits <= 15 if m.group().startswith("+") else digits == 10


_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")

_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:)(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:])")

# Dotted quads that are version or section numbers: after a version-ish word ("zlib 1.2.3.4",
# "section 6.4.4.2", "v1.2.3.4"), a pin or product token ("novas==3.1.1.3", "novas-3.1.1.3",
# "Firefox/2.0.0.11").
_VERSION_BEFORE = re.compile(
    r"(?:\b(?:version|release|python|section|gcc|zlib|openssl|sqlite|v)\s*|==|[\w)]-|[A-Za-z]/)$",
    re.IGNORECASE,
)

# An address handed to the ipaddress API in example code is an example: IPv4Address('192.0.3.6').
_IPADDRESS_CALL = re.compile(
    r"(?:ip_(?:address|network|interface)|IPv[46](?:Address|Network|Interface))\(\s*[\"']$"
)

# "/24" or "/ffff:ff00::" / "/255.255.255.0" after the address: a network, not one host.
_NETWORK_AFTER = re.compile(r"/(?:(\d{1,3})(?![\w.:])|[0-9A-Fa-f.:]*[.:])")

_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def _example_context(m: re.Match, max_prefix: int) -> bool:
    """True where the address is a version/section number, an ipaddress example or a network (CIDR)."""
    text, start, end = m.string, m.start(), m.end()
    before = text[max(0, start - 24) : start]
    if _VERSION_BEFORE.search(before) or _IPADDRESS_CALL.search(before):
        return True
    line_start = text.rfind("\n", 0, start) + 1
    if not text[line_start:start].strip() and text[end : end + 2] in (". ", ".\t"):
        return True  # a numbered heading: "4.2.1.1. Title"
    network = _NETWORK_AFTER.match(text, end)
    return network is not None and (network.group(1) is None or int(network.group(1)) < max_prefix)


def _public_ipv4(m: re.Match) -> bool:
    try:
        addr = ipaddress.IPv4Address(m.group())
    except ValueError:  # an octet over 255 or with a leading zero
        return False
    if all(int(octet) < 20 for octet in m.group().split(".")):
        return False  # "3.12.1.4", "1.5.0.9": a version number (or a public resolver like 8.8.8.8)
    return addr.is_global and not addr.is_multicast and not _example_context(m, 32)


def _public_ipv6(m: re.Match) -> bool:
    # One group alone is not an address worth the risk: "2004::" ends a reST paragraph ("Jan 2004::").
    if sum(bool(group) for group in m.group().split(":")) < 2:
        return False
    try:
        addr = ipaddress.IPv6Address(m.group())
    except ValueError:
        return False
    return addr in _GLOBAL_UNICAST and addr.is_global and not _example_context(m, 128)


_CARD = re.compile(
    r"(?<![\w.,+-])(?:"
    r"\d{13,19}"
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?"  # 4-4-4-1..4 (13-16), 4-4-4-4-3 (19)
    r"|\d{4}([ -])\d{6}\2\d{4,5}"  # Amex 4-6-5, Diners 4-6-4
    r")(?![\w]|[.,-]\d)"
)


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a string of digits (what every payment card number satisfies)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes (IIN ranges) with their lengths: Visa, Mastercard (51-55, 2221-2720), Amex, Diners/JCB,
# Discover/UnionPay/Maestro (6...), Maestro (50, 56-59). A Luhn-valid run outside them (a timestamp, a
# prime in example code, zeros in a hex dump) is not a card.
_CARD_ISSUER = re.compile(
    r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}"
    r"|3(?:0[0-5]|[5689]\d)\d{11,16}|6\d{15,18}|5[06-9]\d{11,17}"
)


def _valid_card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return _CARD_ISSUER.fullmatch(digits) is not None and luhn_valid(digits)


# Each format starts with a literal (fast to scan for); the character before it must not continue a token.
_SECRETS = (
    # a PEM private key block with real base64 in it (not "... (private key in base64) ...")
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?=[^-]*?[A-Za-z0-9+/]{40})[\s\S]*?"
    r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    r"A(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA)[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
    r"gh[pousr]_[A-Za-z0-9]{36,}(?![A-Za-z0-9_])",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{60,}",  # GitHub fine-grained tokens
    r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{20,}",  # OpenAI-style
    r"xox[abposr]-(?=[A-Za-z-]*\d)[A-Za-z0-9-]{10,}",  # Slack
    r"AIza[0-9A-Za-z_-]{35}(?![\w-])",  # Google API keys
    r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe secret and restricted keys
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
)


def _token_start(m: re.Match) -> tuple[int, int] | None:
    before = m.string[m.start() - 1 : m.start()]
    return None if before and (before.isalnum() or before in "_-") else m.span()


class _Detector(NamedTuple):
    pattern: re.Pattern
    # The span to redact for a match, or None to skip it. A bool-returning check keeps the match's own span.
    check: Callable[[re.Match], bool | tuple[int, int] | None] = lambda m: True


_DETECTORS: dict[str, tuple[_Detector, ...]] = {
    "email": (_Detector(_EMAIL_DOMAIN, _public_email),),
    "phone": (_Detector(_PHONE, _plausible_phone),),
    "ip_address": (_Detector(_IPV4, _public_ipv4), _Detector(_IPV6, _public_ipv6)),
    "credit_card": (_Detector(_CARD, _valid_card),),
    "secret": tuple(_Detector(re.compile(p), _token_start) for p in _SECRETS),
}


def find_pii(text: str, types: Iterable[str] = PII_TYPES) -> list[dict]:
    """Non-overlapping PII matches in text order: [{type, start, end, text}]."""
    wanted = set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII types {sorted(unknown)}; known: {list(PII_TYPES)}")
    taken: list[tuple[int, int]] = []
    found = []
    for kind in (t for t in _PRIORITY if t in wanted):
        for det in _DETECTORS[kind]:
            for m in det.pattern.finditer(text):
                span = det.check(m)
                if not span:
                    continue
                start, end = m.span() if span is True else span
                if any(start < e and s < end for s, e in taken):
                    continue
                taken.append((start, end))
                found.append({"type": kind, "start": start, "end": end, "text": text[start:end]})
    return sorted(found, key=lambda f: f["start"])


def redact(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, dict[str, int]]:
    """Replace every match by its placeholder; returns the new text and a count per requested type.

    Repeats until nothing matches: a match can hide a neighbour (in "4111 1111 1111 1111,415.555.0132" the
    phone's digits extend the card run until the phone is replaced), and the no-PII-left check must hold."""
    types = list(types)
    counts = {t: 0 for t in PII_TYPES if t in types}
    for _ in range(5):
        found = find_pii(text, types)
        if not found:
            break
        parts, pos = [], 0
        for f in found:
            parts += [text[pos : f["start"]], PLACEHOLDERS[f["type"]]]
            pos = f["end"]
            counts[f["type"]] += 1
        parts.append(text[pos:])
        text = "".join(parts)
    return text, counts


def redact_documents(docs: list[dict], cfg: PiiConfig) -> dict:
    """Redact the text of every document (other fields kept, content_hash recomputed).

    Returns {documents: new list in input order, counts: {type: matches} for every PII type,
    documents_changed}. With cfg.enabled False the documents come back unchanged.
    """
    counts = {t: 0 for t in PII_TYPES}
    if not cfg.enabled:
        return {"documents": [dict(d) for d in docs], "counts": counts, "documents_changed": 0}
    out, changed = [], 0
    for doc in docs:
        text, found = redact(doc["text"], cfg.types)
        for kind, n in found.items():
            counts[kind] += n
        if text != doc["text"]:
            changed += 1
            doc = {**doc, "text": text, "content_hash": io.text_hash(text)}
        else:
            doc = dict(doc)
        out.append(doc)
    return {"documents": out, "counts": counts, "documents_changed": changed}
