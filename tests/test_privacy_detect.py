"""Sensitive-data detection (service/privacy): known positives and hard negatives per
entity (checksum failures included), exact offsets, no matched text in a Finding,
per-entity configuration, the generator's determinism, and recall/precision on a
seeded generated set. Pure logic: no model, no network, well under a second each."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.privacy import checksums as cs
from service.privacy.detect import ENTITIES, Finding, PatternDetector, looks_random
from service.privacy.ner import CombinedDetector, PresidioDetector, presidio_available
from service.privacy.synthetic import evaluate, generate, sized

DETECTOR = PatternDetector()

# (text, entity, the exact value the finding must span)
POSITIVES = [
    # e-mail
    ("Mail me at john.doe+tag@example.co.uk, thanks.", "email", "john.doe+tag@example.co.uk"),
    ("Reply-To: <Maria.Garcia@mail.example.org>", "email", "Maria.Garcia@mail.example.org"),
    ("mailto:ops@acme-corp.io", "email", "ops@acme-corp.io"),
    # phone
    ("Call +44 20 7946 0958 - 24/7", "phone", "+44 20 7946 0958"),
    ("my number is (415) 555-0132.", "phone", "(415) 555-0132"),
    ("ring 415.555.0132 today", "phone", "415.555.0132"),
    ("Tel: +1 (415) 555-0132", "phone", "+1 (415) 555-0132"),
    ("UK office 020 7946 0958", "phone", "020 7946 0958"),
    ("Berlin 030 12345678 or Munich 089/1234567", "phone", "089/1234567"),
    ("FR: 06.12.34.56.78", "phone", "06.12.34.56.78"),
    ("+44 (0)20 7946 0958", "phone", "+44 (0)20 7946 0958"),
    ("call me on 4155550132", "phone", "4155550132"),
    # payment cards (Luhn-valid test numbers of several networks and formats)
    ("card 4111 1111 1111 1111 exp 12/27", "payment_card", "4111 1111 1111 1111"),
    ("Card: 4111 1111 1111 1111 12/27", "payment_card", "4111 1111 1111 1111"),
    ("amex 3782 822463 10005", "payment_card", "3782 822463 10005"),
    ("mc 5500-0000-0000-0004.", "payment_card", "5500-0000-0000-0004"),
    ("2-series 2221000000000009", "payment_card", "2221000000000009"),
    ("[6011111111111117]", "payment_card", "6011111111111117"),
    ("jcb 3530111333300000", "payment_card", "3530111333300000"),
    ("diners 3056 930902 5904", "payment_card", "3056 930902 5904"),
    ("my card number is 378282246310005 18:24", "payment_card", "378282246310005"),
    # IBAN
    ("IBAN: DE89 3704 0044 0532 0130 00, thanks", "iban", "DE89 3704 0044 0532 0130 00"),
    ("wire to GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
    ("NL91 ABNA 0417 1643 00 please", "iban", "NL91 ABNA 0417 1643 00"),
    ("FR14 2004 1010 0505 0001 3M02 606", "iban", "FR14 2004 1010 0505 0001 3M02 606"),
    # national ids
    ("SSN 123-45-6789", "national_id", "123-45-6789"),
    ("social security number 123 45 6789.", "national_id", "123 45 6789"),
    ("SSN: 123456789", "national_id", "123456789"),
    ("NI number AB 12 34 56 C", "national_id", "AB 12 34 56 C"),
    ("NINO AB123456C.", "national_id", "AB123456C"),
    ("DNI 12345678Z", "national_id", "12345678Z"),
    ("NIE: X1234567L", "national_id", "X1234567L"),
    ("BSN 123456782", "national_id", "123456782"),
    # IP addresses
    ("GET /api from 203.0.113.7:8080", "ip_address", "203.0.113.7"),
    ("host 10.0.3.17 is down", "ip_address", "10.0.3.17"),
    ("[2001:db8::8a2e:370:7334]:443", "ip_address", "2001:db8::8a2e:370:7334"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip_address",
     "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    # API keys
    ("OPENAI_API_KEY=sk-proj-AbC123dEf456GhI789jKl012MnO345pQr", "api_key",
     "sk-proj-AbC123dEf456GhI789jKl012MnO345pQr"),
    ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "api_key",
     "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "api_key", "AKIAIOSFODNN7EXAMPLE"),
    ("use xoxb-123456789012-123456789012-AbCdEfGhIjKlMnOpQrStUvWx", "api_key",
     "xoxb-123456789012-123456789012-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("key AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "api_key",
     "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    # secrets
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN",
     "secret", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ('"client_secret": "9f8e7d6c5b4a39281706f5e4d3c2b1a0"', "secret",
     "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("password: Summer2024!", "secret", "Summer2024!"),
    ("my password is Tr0ub4dor&3", "secret", "Tr0ub4dor&3"),
    ("API key: 550e8400-e29b-41d4-a716-446655440000", "secret",
     "550e8400-e29b-41d4-a716-446655440000"),
    ("secret QWkynkPgzRNkXSFEWevCFwvyIP ref", "secret", "QWkynkPgzRNkXSFEWevCFwvyIP"),
    # less common formats of the same entities
    ("reach me at j.smith@[192.168.1.1]", "email", "j.smith@[192.168.1.1]"),
    ("from abroad 0044 20 7946 0958.", "phone", "0044 20 7946 0958"),
    ("Tel. (030) 1234 5678", "phone", "(030) 1234 5678"),
    ("(+49 30 12345678)", "phone", "+49 30 12345678"),
    ("card 4111.1111.1111.1111", "payment_card", "4111.1111.1111.1111"),
    ("cc#4111111111111111", "payment_card", "4111111111111111"),
    ("IBAN DE89-3704-0044-0532-0130-00", "iban", "DE89-3704-0044-0532-0130-00"),
    ("iban de89 3704 0044 0532 0130 00", "iban", "de89 3704 0044 0532 0130 00"),
    ("SSN#123-45-6789", "national_id", "123-45-6789"),
    ("ssn: 123.45.6789", "national_id", "123.45.6789"),
    ("NHS number 943 476 5919", "national_id", "943 476 5919"),
    ("HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "api_key",
     "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ("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", "api_key",
     "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"),
    ("postgres://admin:S3cretPass@db.internal:5432/app", "secret", "S3cretPass"),
    ("the wifi password is 'correct horse battery staple'", "secret",
     "correct horse battery staple"),
    ("pwd=letmein!", "secret", "letmein!"),
]  # fmt: skip

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1b2c3\n-----END RSA PRIVATE KEY-----"

# texts that must carry no finding at all (hard negatives, checksum failures included)
NEGATIVES = [
    # order and invoice numbers, tracking numbers, ISBNs
    "Order #1234567890 shipped",
    "order number 4111111111111111 shipped",  # Luhn-valid, but an order number
    "INV-2024-004211 is overdue",
    "invoice 2024/0042 and PO 8812345678",
    "tracking 9400 1000 0000 0000 0000 00",
    "UPS 1Z999AA10123456784",
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2",
    # dates, times, versions, prices, short runs
    "on 2024-03-15T10:20:30Z and 15/03/2024 14:30 and 01.02.2024",
    "at 09:05:33.123, 05.03.2024 14:30",
    "Python 3.11.7, v2.14.3, version 10.2.0.1, build 5.1.0.12345, release 4.2.1.7",
    "costs $1,299.99 or 1.299,00 EUR or £3.50",
    "ext. 4021, PIN 1234, code 493021, 555-0132, zip 94107, CVV 123",
    # card-like runs failing Luhn, IBANs failing mod 97, invalid SSNs, DNI letters, BSN
    "card 4111 1111 1111 1112",
    "my card 5500-0000-0000-0005",
    "IBAN DE89 3704 0044 0532 0130 01",
    "SSN 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
    "DNI 12345678A",
    "BSN 123456789",
    "NI number QQ 12 34 56 C and BG123456A",
    # IP-like but not an address
    "256.300.1.2 and 999.1.1.1 and 1.2.3.4.5",
    "mac 00:1A:2B:3C:4D:5E, std::vector<int>, ::1, 12:30:45",
    # UUIDs, git SHAs and key words in ordinary text and code
    "request id 550e8400-e29b-41d4-a716-446655440000",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",
    "api_key = os.environ['OPENAI_API_KEY']",
    "token = get_token_from_cache(user_id)",
    "secret_name = 'prod/db/credentials' [user 8c9f0d46-4ff0-480d-b3e8-360e3c2a075b]",
    "the key point is latency; token count 4096; max_tokens=1024",
    "password reset link expires in 24 hours; password is incorrect",
    "password: ******** and password=${DB_PASSWORD}",
    "cache key user_session_settings_2024",
    "sk-learn-compatible-estimators are nice",
    "icon@2x.png and @app.route('/x') and user@localhost",
    "sha256:e29c2f3600142e617d39ba088f2296964bb3fb82b015106d7cff3f27213b8e4a",
    "apiKey: process.env.STRIPE_SECRET_KEY, re: user c9219a75-72c6-4506-8006-0887f06c0c3a",
    "authToken: refreshAccessTokenIfExpired() - /items/683fe7a7-65c2-4b09-b7e5-8ca7c3ed19df",
    "my password is wrong! and hf_snake_case_module_name_here_x",
    "a dotted 123.45.6789 without its label",
    "tracking 0024 2181 8888 and IBAN-like DE87-4586-9162-8525-2335-29",
    "postgres://user:password@localhost/app and https://user:${TOKEN}@host",
    "Visa ending in 1111; serial number 1234 5678 9012 3456; 4847-9556-7484-0388-510",
]


@pytest.mark.parametrize(("text", "entity", "value"), POSITIVES)
def test_known_positive_found_at_its_offsets(text: str, entity: str, value: str) -> None:
    findings = DETECTOR.detect(text)
    spans = [(f.entity, text[f.start : f.end]) for f in findings]
    assert (entity, value) in spans, spans
    assert entity in DETECTOR.entities_in(text)


def test_pem_block_spans_header_to_footer() -> None:
    text = f"here is the key:\n{PEM}\nthanks"
    (f,) = DETECTOR.detect(text)
    assert (f.entity, text[f.start : f.end]) == ("secret", PEM)


@pytest.mark.parametrize("text", NEGATIVES)
def test_hard_negative_not_flagged(text: str) -> None:
    findings = DETECTOR.detect(text)
    assert findings == [], [(f.entity, text[f.start : f.end]) for f in findings]


def test_findings_sorted_and_disjoint() -> None:
    text = " ".join(t for t, _, _ in POSITIVES)
    findings = DETECTOR.detect(text)
    assert len(findings) >= len(POSITIVES) - 2
    for a, b in zip(findings, findings[1:], strict=False):
        assert a.end <= b.start
    assert all(0.0 <= f.score <= 1.0 and f.entity in ENTITIES for f in findings)


def test_finding_carries_no_matched_text() -> None:
    value = "4111 1111 1111 1111"
    text = f"my card is {value} thanks"
    (f,) = DETECTOR.detect(text)
    for rendered in (repr(f), str(f), repr([f]), repr(f.__dict__ if hasattr(f, "__dict__") else f)):
        assert value not in rendered and "4111" not in rendered
    assert set(Finding.__dataclass_fields__) == {"entity", "start", "end", "score"}


def test_entities_configure_which_recognisers_run() -> None:
    text = "mail a@example.com, card 4111111111111111, ip 10.0.0.1"
    assert PatternDetector(["email"]).entities_in(text) == {"email"}
    assert PatternDetector(["payment_card", "ip_address"]).entities_in(text) == {
        "payment_card",
        "ip_address",
    }
    assert PatternDetector().entities_in(text) == {"email", "payment_card", "ip_address"}
    assert PatternDetector([]).detect(text) == []
    assert PatternDetector().detect("") == []


def test_unknown_entity_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="credit_card"):
        PatternDetector(["email", "credit_card"])


def test_checksums() -> None:
    assert cs.luhn_ok("4111111111111111") and not cs.luhn_ok("4111111111111112")
    assert cs.luhn_ok("79927398713")
    body = "453201511283036"
    assert cs.luhn_ok(body + cs.luhn_check_digit(body))
    assert cs.card_brand("378282246310005") == "amex"
    assert cs.card_brand("2221000000000009") == "mastercard"
    assert cs.card_brand("9111111111111111") is None  # no network starts with 9
    assert cs.iban_ok("DE89370400440532013000") and not cs.iban_ok("DE89370400440532013001")
    assert not cs.iban_ok("DE8937040044053201300")  # one short of Germany's 22
    assert cs.iban_check_digits("GB", "WEST12345698765432") == "82"
    assert cs.ssn_ok("123", "45", "6789")
    assert not any(
        cs.ssn_ok(*p) for p in [("000", "12", "3456"), ("666", "12", "3456"), ("901", "12", "3456")]
    )
    assert cs.dni_ok("12345678", "Z") and not cs.dni_ok("12345678", "A")
    assert cs.dni_ok("X1234567", "L")
    assert cs.bsn_ok("111222333") and not cs.bsn_ok("111222334")
    assert cs.nino_prefix_ok("AB") and not cs.nino_prefix_ok("GB") and not cs.nino_prefix_ok("DA")


def test_entropy_rule_separates_tokens_from_identifiers() -> None:
    assert looks_random("9f8e7d6c5b4a39281706f5e4d3c2b1a0")
    assert looks_random("aB3dE5fG7hJ9kL1mN3pQ5rS7tU9")
    assert not looks_random("user_session_settings_2024")
    assert not looks_random("sessionTokenRefreshInterval")
    assert not looks_random("MAX_RETRY_COUNT_FOR_UPLOADS")


def test_no_catastrophic_backtracking() -> None:
    """Adversarial inputs stay linear: long digit runs with separators, '@' runs,
    colon runs, base64 blobs, repeated key words."""
    texts = [
        "1 2-3.4/5 (6) " * 800,
        "a@" * 3000 + "b.c",
        "a" * 5000 + "@" + "b." * 2000,
        "::" * 3000 + "1",
        "f:" * 4000,
        "+1 " * 3000,
        "key " * 2000 + "A" * 5000,
        "A1b2C3d4" * 1000,
        "DE89 " * 2000,
        "0" * 10000,
        "4111 " * 3000,
        "eyJ" * 2000 + "." + "eyJ" * 2000,
    ]
    for text in texts:
        t0 = time.perf_counter()
        DETECTOR.detect(text)
        assert time.perf_counter() - t0 < 1.0, text[:30]


def test_generator_is_deterministic_and_labels_are_sound() -> None:
    a, b = generate(60, seed=7), generate(60, seed=7)
    assert a == b
    assert generate(60, seed=8) != a
    spans = [s for item in a for s in item.spans]
    assert spans and all(s.kind in ENTITIES for s in spans)
    for item in a:
        for s in item.spans + item.negatives:
            assert 0 <= s.start < s.end <= len(item.text)
    assert {item.genre for item in a} == {"ticket", "chat", "code", "email"}
    sized_texts = sized(20, seed=3, length=500)
    assert sized_texts == sized(20, seed=3, length=500)
    assert all(len(t) == 500 for t in sized_texts)


def test_recall_and_precision_on_a_generated_set() -> None:
    """A held-out seed (not the benchmark's): thresholds a little below the benchmark's
    figures, so a broken recogniser fails this test."""
    data = generate(500, seed=12345)
    scores, false_by = evaluate(DETECTOR.detect, data)
    assert set(scores) == set(ENTITIES)
    for entity in ("payment_card", "email", "api_key"):
        assert scores[entity].recall >= 0.98, (entity, scores[entity])
    for entity in ENTITIES:
        assert scores[entity].recall >= 0.9, (entity, scores[entity])
        assert scores[entity].precision >= 0.85, (entity, scores[entity], false_by)
    true = sum(s.true for s in scores.values())
    false = sum(s.false for s in scores.values())
    assert true / (true + false) >= 0.95, false_by


@dataclass
class _StubResult:
    entity_type: str
    start: int
    end: int
    score: float


class _StubAnalyzer:
    """Presidio's AnalyzerEngine.analyze, canned: the mapping is tested without it."""

    def __init__(self, results: list[_StubResult]) -> None:
        self.results = results
        self.asked: list[str] | None = None

    def analyze(self, text: str, language: str, entities: list[str] | None = None) -> list:
        self.asked = entities
        return self.results


def test_presidio_detector_maps_types_and_scores() -> None:
    text = "John Smith paid with 4111 1111 1111 1111 in Leeds"
    stub = _StubAnalyzer(
        [
            _StubResult("PERSON", 0, 10, 0.85),
            _StubResult("CREDIT_CARD", 21, 40, 1.0),
            _StubResult("LOCATION", 44, 49, 0.3),  # below min_score
            _StubResult("DATE_TIME", 0, 4, 0.9),  # not a type we route on
        ]
    )
    ner = PresidioDetector(analyzer=stub)
    assert [(f.entity, text[f.start : f.end]) for f in ner.detect(text)] == [
        ("person", "John Smith"),
        ("payment_card", "4111 1111 1111 1111"),
    ]
    only = PresidioDetector(["person"], analyzer=stub)
    assert only.entities_in(text) == {"person"}
    assert stub.asked == ["PERSON"]
    with pytest.raises(ValueError, match="postcode"):
        PresidioDetector(["postcode"], analyzer=stub)
    both = CombinedDetector(DETECTOR, ner)
    assert both.entities_in(text) == {"person", "payment_card"}


def test_presidio_detector_needs_the_package() -> None:
    if presidio_available():
        pytest.skip("presidio-analyzer is installed")
    with pytest.raises(ImportError, match="presidio-analyzer"):
        PresidioDetector()


def test_presidio_real_engine_if_installed() -> None:
    pytest.importorskip("presidio_analyzer")
    try:
        ner = PresidioDetector(["person", "email"])
    except OSError as e:  # no spaCy model downloaded
        pytest.skip(f"presidio without its model: {e}")
    assert "person" in ner.entities_in("Please book a follow-up for John Smith next week.")


_ALPHABET = "0123456789 .-/()+:@#_=abcdefXYZ\n'\"٣é€" + "ghpsk"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_ALPHABET, max_size=300) | st.text(max_size=200))
def test_detect_never_raises_and_spans_are_sound(text: str) -> None:
    findings = DETECTOR.detect(text)
    for a, b in zip(findings, findings[1:], strict=False):
        assert a.end <= b.start
    for f in findings:
        assert 0 <= f.start < f.end <= len(text) and f.entity in ENTITIES


def test_many_findings_resolve_in_linear_time() -> None:
    text = "".join(f"from 10.0.{i % 256}.{i % 200 + 1} user{i}@example.com; " for i in range(5000))
    t0 = time.perf_counter()
    findings = DETECTOR.detect(text)
    assert len(findings) == 10000
    assert time.perf_counter() - t0 < 2.0
