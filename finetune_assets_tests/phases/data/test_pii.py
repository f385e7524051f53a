"""pii phase: typed redaction of emails, phones, public IPs, Luhn-valid cards and secrets.

Every secret below is fake and assembled from pieces, so secret scanners do not flag this file.
"""

import pytest

from finetune_assets import io
from finetune_assets.config import PII_TYPES, PiiConfig
from finetune_assets.phases.data.pii import PLACEHOLDERS, find_pii, luhn_valid, redact, redact_documents

SECRETS = {
    "aws": "AKIA" + "IOSFODNN7" + "EXAMPLE",
    "aws_session": "ASIA" + "Y34FZKBOKMUTVV7A",
    "github": "ghp_" + "A1b2C3d4" * 4 + "E5f6",
    "github_oauth": "gho_" + "Z9y8X7w6" * 4 + "V5u4",
    "github_server": "ghs_" + "Q1w2E3r4" * 4 + "T5y6",
    "github_pat": "github_pat_" + "11ABCDEFG0" + "a1B2c3D4e5" * 7,
    "openai": "sk-" + "proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "slack": "xoxb" + "-123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx",
    "google": "AIza" + "SyD-abcdefghijklmnopqrstuvwxyz12345",
    "stripe": "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "stripe_restricted": "rk_" + "live_" + "51H2x3Y4z5A6b7C8d9E0f1G2",
    "jwt": "eyJ"
    + "hbGciOiJIUzI1NiJ9"
    + ".eyJ"
    + "zdWIiOiIxMjM0NTY3ODkwIn0"
    + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\n"
    + "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi2" * 2
    + "\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    + "-----END RSA PRIVATE KEY-----",
}

PLANTED = [
    ("email", "jane.doe@acme-corp.com"),
    ("email", "j_smith+news@mail.university.ac.uk"),
    ("phone", "+1 415-555-0132"),
    ("phone", "(415) 555-0132"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "415.555.0132"),
    ("ip_address", "93.184.216.34"),
    ("ip_address", "2a00:1450:4001:82b::200e"),
    ("credit_card", "4111 1111 1111 1111"),
    ("credit_card", "5555-5555-5555-4444"),
    ("credit_card", "378282246310005"),
] + [("secret", value) for value in SECRETS.values()]

# Look like PII to a naive pattern, but are not (or are not personal): all must survive redaction.
LEFT_ALONE = [
    "4111 1111 1111 1112",  # 16 digits, Luhn-invalid
    "0000000000000000",  # Luhn-valid zeros in a hex dump, no card issuer starts with 0
    "112272535095293",  # a prime from example code
    "192.168.1.1",  # private
    "127.0.0.1",  # loopback
    "10.0.0.7",  # private
    "169.254.10.20",  # link-local
    "192.0.2.44",  # documentation range (RFC 5737)
    "224.0.0.251",  # multicast
    "2001:db8::1",  # IPv6 documentation range
    "fe80::1",  # IPv6 link-local
    "Python 3.12.1.4",  # a version, not an address
    "novas==3.1.1.3",
    "zlib 1.2.11.1",
    "2024-03-15",  # a date
    "15.03.2024",
    "2024-03-15 12:30:45",
    "3.14159265358979",  # a float
    "version 1.2.3",
    "sys.maxsize == 9223372036854775807",
    "12345678",
    "x = 4155550132",  # bare digits: phones need separators
    "user@example.com",  # reserved example domain
    "admin@host.test",
    "-----BEGIN RSA PRIVATE KEY-----\n... (private key in base64 encoding) ...\n-----END RSA PRIVATE KEY-----",
    "sk-learn is not a key",
    "ipaddress.ip_network('192.0.3.0/24')",
    "52.94.236.0/24",  # a network block, not one host
    "'1.0.0.127.in-addr.arpa'",  # a reverse-DNS name
    "\n4.2.1.1. Known issues",  # a numbered heading
    "ends on Sunday, 4 Jan 2004::",  # a reST literal-block marker, not IPv6
]


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(("kind", "value"), PLANTED, ids=[f"{k}:{v[:12]}" for k, v in PLANTED])
def test_planted_pii_is_replaced_by_its_placeholder(kind, value):
    text = f"Contact record: {value}, noted on Monday.\nNext line stays."
    redacted, counts = redact(text)
    assert value not in redacted
    assert redacted == f"Contact record: {PLACEHOLDERS[kind]}, noted on Monday.\nNext line stays."
    assert counts == {t: int(t == kind) for t in PII_TYPES}
    assert find_pii(redacted) == []


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_lookalikes_are_left_alone(text):
    assert find_pii(f"See {text} here.") == []
    assert redact(text)[0] == text


def test_find_pii_reports_spans_in_text_order():
    text = "Mail bob@acme.io or call +1 415-555-0132 from 93.184.216.34."
    found = find_pii(text)
    assert [(f["type"], f["text"]) for f in found] == [
        ("email", "bob@acme.io"),
        ("phone", "+1 415-555-0132"),
        ("ip_address", "93.184.216.34"),
    ]
    assert all(text[f["start"] : f["end"]] == f["text"] for f in found)


def test_counts_and_repeats():
    text = "a@acme.io b@acme.io 4111111111111111 " + SECRETS["aws"] + " " + SECRETS["github"]
    redacted, counts = redact(text)
    assert redacted == "[EMAIL] [EMAIL] [CREDIT_CARD] [SECRET] [SECRET]"
    assert counts == {"email": 2, "phone": 0, "ip_address": 0, "credit_card": 1, "secret": 2}
    assert redact(redacted) == (redacted, dict.fromkeys(PII_TYPES, 0))  # placeholders never match


def test_only_requested_types_are_redacted():
    text = "bob@acme.io from 93.184.216.34"
    redacted, counts = redact(text, ["ip_address"])
    assert redacted == "bob@acme.io from [IP_ADDRESS]"
    assert counts == {"ip_address": 1}
    with pytest.raises(ValueError, match="unknown PII types"):
        find_pii(text, ["address"])


def test_a_secret_wins_over_what_it_contains():
    # The JWT's payload could hold anything; it is one secret, not a secret plus pieces.
    (match,) = find_pii("token " + SECRETS["jwt"])
    assert match["type"] == "secret" and match["text"] == SECRETS["jwt"]


def _doc(i: int, text: str) -> dict:
    return {
        "id": f"d{i}",
        "text": text,
        "source": f"s{i}.txt",
        "drop": "drop-1",
        "content_hash": io.text_hash(text),
    }


def test_redact_documents():
    docs = [
        _doc(0, "Written by Ann <ann@acme.io>, reachable at (415) 555-0132."),
        _doc(1, "Nothing personal: the loopback address is 127.0.0.1."),
        _doc(2, "Key " + SECRETS["stripe"] + " and ann@acme.io again."),
    ]
    result = redact_documents(docs, PiiConfig())
    out = result["documents"]
    assert [d["id"] for d in out] == ["d0", "d1", "d2"]
    assert out[0]["text"] == "Written by Ann <[EMAIL]>, reachable at [PHONE]."
    assert out[1] == docs[1]
    assert out[2]["text"] == "Key [SECRET] and [EMAIL] again."
    assert all(d["content_hash"] == io.text_hash(d["text"]) for d in out)
    assert out[0]["content_hash"] != docs[0]["content_hash"]
    assert {k: out[0][k] for k in ("source", "drop")} == {"source": "s0.txt", "drop": "drop-1"}
    assert result["counts"] == {"email": 2, "phone": 1, "ip_address": 0, "credit_card": 0, "secret": 1}
    assert result["documents_changed"] == 2
    assert "ann@acme.io" in docs[0]["text"]  # the input documents are not modified


def test_redact_documents_respects_config():
    docs = [_doc(0, "ann@acme.io at 93.184.216.34")]
    only_ip = redact_documents(docs, PiiConfig(types=["ip_address"]))
    assert only_ip["documents"][0]["text"] == "ann@acme.io at [IP_ADDRESS]"
    assert only_ip["counts"] == {"email": 0, "phone": 0, "ip_address": 1, "credit_card": 0, "secret": 0}
    off = redact_documents(docs, PiiConfig(enabled=False))
    assert off["documents"] == docs and off["documents_changed"] == 0
    assert set(off["counts"].values()) == {0}


def test_a_match_hiding_its_neighbour_is_still_redacted():
    text, counts = redact("pay 4111 1111 1111 1111,415.555.0132 today")
    assert find_pii(text) == [] and counts["credit_card"] == 1 and counts["phone"] == 1
