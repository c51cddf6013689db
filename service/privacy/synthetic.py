"""A labelled synthetic set for the sensitive-data detector: realistic texts (support
tickets, chat messages, code and config snippets, e-mails) with identifiers embedded
at known offsets, and hard negatives that look like identifiers but are not.

Why synthetic: real queries with real identifiers cannot be shared or committed.
Why it must be honest: a generator written by the detector's author is easy to game,
so it varies what the detector has to cope with: several formats per entity
(grouped, contiguous, national and international), separators, surrounding
punctuation and brackets, carriers with and without a helpful context word, and the
hard negatives that break naive patterns: order and invoice numbers (some 16-digit
order numbers pass Luhn by chance), dates and times, version strings (including
four-part ones that parse as IPv4), prices, short digit runs, UUIDs and git SHAs in
ordinary text, ISBNs, tracking numbers, card-like runs failing Luhn, IBANs failing
mod 97, invalid SSNs, out-of-range IPs, MAC addresses, and code that names a key or
a token without holding one. What it cannot do is produce the formats nobody thought
of; the benchmark measures consistency with these formats, not coverage of the world.

`generate(n, seed)` is deterministic for a seed (one `random.Random`, no global state).
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from service.privacy import checksums as cs
from service.privacy.detect import ENTITIES, Finding


@dataclass(frozen=True)
class Span:
    """A labelled span: an entity type (or, for a hard negative, its kind) and
    character offsets [start, end)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Labelled:
    """One generated text: its sensitive spans (`spans`, kinds from detect.ENTITIES),
    the hard negatives embedded in it (`negatives`, for error analysis) and its genre."""

    text: str
    spans: tuple[Span, ...]
    negatives: tuple[Span, ...] = ()
    genre: str = ""


B62 = string.ascii_letters + string.digits
B64URL = B62 + "-_"
HEXL = "0123456789abcdef"
UPPER_DIGITS = string.ascii_uppercase + string.digits

FIRST = [
    "john",
    "maria",
    "li",
    "ahmed",
    "sofia",
    "lukas",
    "emma",
    "raj",
    "chloe",
    "pedro",
    "anna",
    "tom",
    "fatima",
    "yuki",
    "olga",
    "noah",
    "ines",
    "mehmet",
    "sara",
    "jan",
]
LAST = [
    "smith",
    "garcia",
    "wang",
    "khan",
    "rossi",
    "muller",
    "dupont",
    "patel",
    "novak",
    "jansen",
    "silva",
    "kowalski",
    "tanaka",
    "ivanova",
    "brown",
    "lopez",
    "weber",
    "li",
]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "acme-corp.io",
    "gmail.com",
    "outlook.com",
    "uni-heidelberg.de",
    "nhs.net",
    "company.co.uk",
    "startup.ai",
    "web.de",
    "corp.example.com.au",
    "hospital-lyon.fr",
    "yahoo.es",
    "proton.me",
    "firm.nl",
]
PRODUCTS = [
    "the dashboard",
    "the mobile app",
    "my subscription",
    "the export",
    "billing",
    "the API",
    "checkout",
    "the invoice page",
    "single sign-on",
    "the sync job",
]


# --- values --------------------------------------------------------------------------


def _digits(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _rand(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def email(r: random.Random) -> str:
    f, last = r.choice(FIRST), r.choice(LAST)
    local = r.choice(
        [
            f"{f}.{last}",
            f"{f[0]}{last}",
            f"{f}_{last}{r.randint(1, 99)}",
            f"{f}+{r.choice(['news', 'work', 'shop'])}",
            f"{f}{r.randint(1970, 2005)}",
            f"{f}.{last[0]}",
            f"{last}-{f}",
            f"{f}",
        ]
    )
    u = r.random()
    if u < 0.02:  # an IP-literal domain
        return f"{local}@[{ipv4(r)}]"
    addr = f"{local}@{r.choice(DOMAINS)}"
    if u < 0.07:
        return addr.upper()
    return addr.title() if u < 0.15 else addr


def phone(r: random.Random) -> str:
    a = f"{r.randint(2, 9)}{_digits(r, 2)}"
    e = f"{r.randint(2, 9)}{_digits(r, 2)}"
    ln = _digits(r, 4)
    d = _digits
    fmt = r.choice(
        [
            f"({a}) {e}-{ln}",
            f"{a}-{e}-{ln}",
            f"{a}.{e}.{ln}",
            f"{a} {e} {ln}",
            f"+1 {a} {e} {ln}",
            f"+1-{a}-{e}-{ln}",
            f"+1 ({a}) {e}-{ln}",
            f"1-{a}-{e}-{ln}",
            f"+1{a}{e}{ln}",
            f"+44 20 {d(r, 4)} {d(r, 4)}",
            f"020 {d(r, 4)} {d(r, 4)}",
            f"07{d(r, 3)} {d(r, 6)}",
            f"+44 7{d(r, 3)} {d(r, 6)}",
            f"+44 (0)20 {d(r, 4)} {d(r, 4)}",
            f"01632 960{d(r, 3)}",
            f"+49 30 {d(r, 8)}",
            f"030 {d(r, 8)}",
            f"0171 {d(r, 7)}",
            f"+49 171 {d(r, 7)}",
            f"089/{d(r, 7)}",
            f"+33 1 {d(r, 2)} {d(r, 2)} {d(r, 2)} {d(r, 2)}",
            f"01 {d(r, 2)} {d(r, 2)} {d(r, 2)} {d(r, 2)}",
            f"06.{d(r, 2)}.{d(r, 2)}.{d(r, 2)}.{d(r, 2)}",
            f"+33 6 {d(r, 2)} {d(r, 2)} {d(r, 2)} {d(r, 2)}",
            f"+34 6{d(r, 2)} {d(r, 3)} {d(r, 3)}",
            f"+31 6 {d(r, 8)}",
            f"+91 9{d(r, 4)} {d(r, 5)}",
            f"+61 4{d(r, 2)} {d(r, 3)} {d(r, 3)}",
            f"+{r.choice(['44', '49', '33', '34', '39'])}{d(r, 10)}",
            f"+1.{a}.{e}.{ln}",
            f"({r.choice(['030', '040', '089', '0221'])}) {d(r, 4)} {d(r, 4)}",
            f"00{r.choice(['44', '49', '33', '31'])} {d(r, 2)} {d(r, 4)} {d(r, 4)}",
            f"+49 (0) {r.choice(['30', '40', '89'])} {d(r, 8)}",
        ]
    )
    return fmt


# (IIN prefix chooser, length) per brand, weighted like real traffic
def _card_digits(r: random.Random) -> tuple[str, str]:
    brand = r.choices(
        ["visa", "mastercard", "mc2", "amex", "discover", "jcb", "diners", "unionpay", "maestro"],
        weights=[35, 20, 5, 12, 8, 5, 4, 6, 5],
    )[0]
    if brand == "visa":
        prefix, n = "4", r.choice([16, 16, 16, 16, 13, 19])
    elif brand == "mastercard":
        prefix, n = str(r.randint(51, 55)), 16
    elif brand == "mc2":
        prefix, n = str(r.randint(2221, 2720)), 16
    elif brand == "amex":
        prefix, n = r.choice(["34", "37"]), 15
    elif brand == "discover":
        prefix, n = r.choice(["6011", "65", str(r.randint(644, 649))]), 16
    elif brand == "jcb":
        prefix, n = str(r.randint(3528, 3589)), 16
    elif brand == "diners":
        prefix, n = r.choice(["36", "38", str(r.randint(300, 305))]), 14
    elif brand == "unionpay":
        prefix, n = "62", r.choice([16, 19])
    else:
        prefix, n = r.choice(["6759", "5018", "6304"]), r.choice([16, 19])
    body = prefix + _digits(r, n - len(prefix) - 1)
    return brand, body + cs.luhn_check_digit(body)


def format_card(r: random.Random, digits: str) -> str:
    n = len(digits)
    style = r.random()
    if style < 0.35:
        return digits
    if style > 0.95 and n == 16:
        return ".".join(digits[i : i + 4] for i in range(0, n, 4))
    sep = " " if style < 0.75 else "-"
    if n == 15 or (n == 14 and r.random() < 0.5):
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i : i + 4] for i in range(0, n, 4))


def card(r: random.Random) -> str:
    return format_card(r, _card_digits(r)[1])


def _luhn_failing_card(r: random.Random) -> str:
    _, digits = _card_digits(r)
    bad = str((int(digits[-1]) + r.randint(1, 9)) % 10)
    return format_card(r, digits[:-1] + bad)


# (country, BBAN generator)
_BBAN: dict[str, Callable[[random.Random], str]] = {
    "DE": lambda r: _digits(r, 18),
    "GB": lambda r: _rand(r, string.ascii_uppercase, 4) + _digits(r, 14),
    "FR": lambda r: _digits(r, 10) + _rand(r, UPPER_DIGITS, 11) + _digits(r, 2),
    "ES": lambda r: _digits(r, 20),
    "IT": lambda r: r.choice(string.ascii_uppercase) + _digits(r, 10) + _rand(r, UPPER_DIGITS, 12),
    "NL": lambda r: _rand(r, string.ascii_uppercase, 4) + _digits(r, 10),
    "BE": lambda r: _digits(r, 12),
    "CH": lambda r: _digits(r, 5) + _rand(r, UPPER_DIGITS, 12),
    "AT": lambda r: _digits(r, 16),
    "PL": lambda r: _digits(r, 24),
    "SE": lambda r: _digits(r, 20),
    "IE": lambda r: _rand(r, string.ascii_uppercase, 4) + _digits(r, 14),
    "PT": lambda r: _digits(r, 21),
    "FI": lambda r: _digits(r, 14),
    "NO": lambda r: _digits(r, 11),
    "LU": lambda r: _digits(r, 3) + _rand(r, UPPER_DIGITS, 13),
}


def _iban_compact(r: random.Random) -> str:
    country = r.choice(list(_BBAN))
    bban = _BBAN[country](r)
    return country + cs.iban_check_digits(country, bban) + bban


def format_iban(r: random.Random, compact: str) -> str:
    u = r.random()
    if u < 0.55:
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    if u < 0.65:
        return "-".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


def iban(r: random.Random) -> str:
    return format_iban(r, _iban_compact(r))


def _ssn_parts(r: random.Random) -> tuple[str, str, str]:
    area = r.randint(1, 899)
    if area == 666:
        area = 665
    return f"{area:03d}", f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"


def _nino(r: random.Random) -> str:
    while True:
        prefix = r.choice(cs.NINO_FIRST) + r.choice(cs.NINO_SECOND)
        if cs.nino_prefix_ok(prefix):
            break
    d = _digits(r, 6)
    suffix = r.choice("ABCD")
    if r.random() < 0.5:
        return f"{prefix} {d[:2]} {d[2:4]} {d[4:]} {suffix}"
    return f"{prefix}{d}{suffix}"


def _dni(r: random.Random) -> str:
    if r.random() < 0.6:
        n = r.randint(0, 99_999_999)
        return f"{n:08d}{r.choice(['', '', '-'])}{cs.dni_letter(n)}"
    lead = r.choice("XYZ")
    n = r.randint(0, 9_999_999)
    return f"{lead}{n:07d}{cs.dni_letter(int(str('XYZ'.index(lead)) + f'{n:07d}'))}"


def _bsn(r: random.Random) -> str:
    while True:
        d = _digits(r, 9)
        if d[0] != "0" and cs.bsn_ok(d):
            return d if r.random() < 0.7 else f"{d[:4]}.{d[4:6]}.{d[6:]}"


def ipv4(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.3:
        return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    if kind < 0.5:
        return f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}"
    if kind < 0.6:
        return f"172.{r.randint(16, 31)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    return ".".join(str(r.randint(1, 254)) for _ in range(4))


def ipv6(r: random.Random) -> str:
    import ipaddress

    if r.random() < 0.5:
        addr = ipaddress.IPv6Address(
            (0x20010DB8 << 96) | (r.getrandbits(16) << 80) | r.getrandbits(24)
        )
    else:
        addr = ipaddress.IPv6Address(r.getrandbits(128) | (0x2 << 124))
    return addr.exploded if r.random() < 0.25 else str(addr)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def api_key(r: random.Random) -> str:
    kind = r.randrange(16)
    if kind == 0:
        return "sk-" + _rand(r, B62, 48)
    if kind == 1:
        return "sk-proj-" + _rand(r, B64URL, r.choice([48, 64, 156]))
    if kind == 2:
        return "sk-ant-api03-" + _rand(r, B64URL, 93) + "AA"
    if kind == 3:
        return r.choice(["ghp_", "gho_", "ghs_"]) + _rand(r, B62, 36)
    if kind == 4:
        return "github_pat_" + _rand(r, B62, 22) + "_" + _rand(r, B62, 59)
    if kind == 5:
        return f"xox{r.choice('baprs')}-{_digits(r, 12)}-{_digits(r, 12)}-{_rand(r, B62, 24)}"
    if kind == 6:
        return r.choice(["AKIA", "ASIA"]) + _rand(r, UPPER_DIGITS, 16)
    if kind == 7:
        return "AIza" + _rand(r, B64URL, 35)
    if kind == 8:
        return f"{r.choice(['sk', 'rk'])}_{r.choice(['live', 'test'])}_" + _rand(r, B62, 24)
    if kind == 9:
        return "glpat-" + _rand(r, B64URL, 20)
    if kind == 10:
        return "sk-" + _rand(r, B62, 20) + "T3BlbkFJ" + _rand(r, B62, 20)
    if kind == 11:
        return "hf_" + _rand(r, string.ascii_letters, 34)
    if kind == 12:
        return f"SG.{_rand(r, B64URL, 22)}.{_rand(r, B64URL, 43)}"
    if kind == 13:
        return "npm_" + _rand(r, B62, 36)
    if kind == 14:
        return "pypi-AgEIcHlwaS5vcmc" + _rand(r, B64URL, r.randint(60, 120))
    return "SK" + _rand(r, HEXL, 32)


def jwt(r: random.Random) -> str:
    header = {"alg": r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {
        "sub": str(r.randint(1, 10**9)),
        "name": r.choice(FIRST),
        "iat": r.randint(1_600_000_000, 1_800_000_000),
    }
    sig = _b64url(r.randbytes(32 if header["alg"] == "HS256" else 64))
    enc = _b64url(json.dumps(header, separators=(",", ":")).encode())
    return f"{enc}.{_b64url(json.dumps(payload).encode())}.{sig}"


def pem(r: random.Random) -> str:
    label = r.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = base64.b64encode(r.randbytes(48 * r.randint(2, 6))).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


def generic_token(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.35:
        return _rand(r, B62, r.randint(24, 48))
    if kind < 0.55:
        return _rand(r, HEXL, r.choice([32, 40, 64]))
    if kind < 0.75:
        return base64.b64encode(r.randbytes(r.choice([18, 24, 30, 32]))).decode()
    if kind < 0.9:
        return _rand(r, B64URL, r.randint(24, 44))
    return str(uuid.UUID(int=r.getrandbits(128), version=4))


def password(r: random.Random) -> str:
    word = r.choice(
        [
            "Summer",
            "winter",
            "Dragon",
            "monkey",
            "Sunshine",
            "Qwerty",
            "Bayern",
            "Tr0ub4dor",
            "letmein",
            "Passw0rd",
            "coffee",
            "Liverpool",
        ]
    )
    return word + r.choice(
        [
            str(r.randint(1, 9999)),
            "!",
            "#" + _digits(r, 2),
            "@" + _digits(r, 4),
            str(r.randint(1, 99)) + "$",
            "&3",
        ]
    )


# --- hard negatives ------------------------------------------------------------------


def _isbn13(r: random.Random) -> str:
    body = r.choice(["978", "979"]) + _digits(r, 9)
    check = (10 - sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body)) % 10) % 10
    d = body + str(check)
    if r.random() < 0.5:
        return d
    return f"{d[:3]}-{d[3]}-{d[4:6]}-{d[6:12]}-{d[12]}"


def _isbn10(r: random.Random) -> str:
    body = _digits(r, 9)
    check = (11 - sum((10 - i) * int(c) for i, c in enumerate(body)) % 11) % 11
    c = "X" if check == 10 else str(check)
    return f"{body[0]}-{body[1:4]}-{body[4:9]}-{c}" if r.random() < 0.6 else body + c


def _date(r: random.Random) -> str:
    y, m, d = r.randint(1990, 2030), r.randint(1, 12), r.randint(1, 28)
    return r.choice(
        [
            f"{y}-{m:02d}-{d:02d}",
            f"{d:02d}/{m:02d}/{y}",
            f"{m:02d}/{d:02d}/{y}",
            f"{d:02d}.{m:02d}.{y}",
            f"{d}.{m}.{y}",
            f"{y}-{m:02d}-{d:02d}T{_hm(r)}:{r.randint(0, 59):02d}Z",
            f"{d:02d}-{m:02d}-{y}",
            f"{y}{m:02d}{d:02d}",
            f"{d:02d}/{m:02d}/{y % 100:02d}",
            f"{['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun'][m % 6]} {d}, {y}",
            f"{d:02d}.{m:02d}.{y} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
            f"{d:02d}/{m:02d}/{y} {r.randint(10, 23)}:{r.randint(10, 59)}",
        ]
    )


def _hm(r: random.Random) -> str:
    return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"


def _time(r: random.Random) -> str:
    h, m, s = r.randint(0, 23), r.randint(0, 59), r.randint(0, 59)
    return r.choice(
        [f"{h:02d}:{m:02d}", f"{h:02d}:{m:02d}:{s:02d}", f"{h}:{m:02d}:{s:02d}.{_digits(r, 3)}"]
    )


def _version(r: random.Random) -> str:
    a, b, c = r.randint(0, 20), r.randint(0, 30), r.randint(0, 200)
    return r.choice(
        [
            f"v{a}.{b}.{c}",
            f"{a}.{b}.{c}",
            f"version {a}.{b}.{c}.{r.randint(0, 255)}",
            f"v{a}.{b}.{c}.{r.randint(0, 255)}",
            f"Python 3.{r.randint(8, 13)}.{r.randint(0, 12)}",
            f"build {a}.{b}.{c}.{r.randint(1000, 99999)}",
            f"{a}.{b}.{c}-beta.{r.randint(1, 9)}",
            f"release {a}.{b}.{r.randint(0, 9)}.{r.randint(0, 99)}",
        ]
    )


def _price(r: random.Random) -> str:
    v = r.randint(1, 99999)
    return r.choice(
        [
            f"${v:,}.{r.randint(0, 99):02d}",
            f"€{v}.00",
            f"{v:,}".replace(",", ".") + ",00 EUR",
            f"USD {v:,}",
            f"£{r.randint(1, 99)}.{r.randint(0, 99):02d}",
            f"{v} JPY",
        ]
    )


def _short_digits(r: random.Random) -> str:
    return r.choice(
        [
            f"ext. {_digits(r, 4)}",
            f"PIN {_digits(r, 4)}",
            f"room {r.randint(100, 9999)}",
            f"code {_digits(r, 6)}",
            f"{r.randint(200, 999)}-{_digits(r, 4)}",
            f"zip {_digits(r, 5)}",
            f"CVV {_digits(r, 3)}",
            f"dial {r.choice(['911', '112', '999'])}",
            f"{_digits(r, 3)} {_digits(r, 4)}",
            f"port {r.randint(1024, 65535)}",
            f"{_digits(r, 2)} {_digits(r, 2)} {_digits(r, 2)}",
        ]
    )


def _order(r: random.Random) -> str:
    return r.choice(
        [
            f"Order #{_digits(r, r.randint(6, 10))}",
            f"order ORD-{r.randint(2019, 2026)}-{_digits(r, 6)}",
            f"order number {_digits(r, 16)}",
            f"Order No. {_digits(r, 13)}",
            f"order A-{_digits(r, 8)}",
            f"order #{_digits(r, 4)}-{_digits(r, 4)}-{_digits(r, 4)}-{_digits(r, 4)}",
            f"confirmation number {_digits(r, 15)}",
            f"booking ref {_rand(r, UPPER_DIGITS, 6)}",
            f"Customer ID {_digits(r, 10)}",
            f"account no. {_digits(r, 12)}",
        ]
    )


def _invoice(r: random.Random) -> str:
    return r.choice(
        [
            f"INV-{r.randint(2019, 2026)}-{_digits(r, 6)}",
            f"invoice {r.randint(2019, 2026)}/{_digits(r, 4)}",
            f"invoice no. {_digits(r, 8)}",
            f"Invoice #{_digits(r, 14)}",
            f"PO {_digits(r, 10)}",
            f"ticket #{_digits(r, 7)}",
            f"case {_digits(r, 8)}",
            f"transaction id {_digits(r, 18)}",
        ]
    )


def _tracking(r: random.Random) -> str:
    return r.choice(
        [
            "1Z" + _rand(r, UPPER_DIGITS, 6) + _digits(r, 10),
            " ".join(["9400"] + [_digits(r, 4) for _ in range(4)] + [_digits(r, 2)]),
            f"{_digits(r, 4)} {_digits(r, 4)} {_digits(r, 4)}",
            "JD" + _digits(r, 18),
            f"tracking number {_digits(r, 22)}",
            f"tracking {_digits(r, 15)}",
        ]
    )


def _uuid(r: random.Random) -> str:
    u = str(uuid.UUID(int=r.getrandbits(128), version=4))
    return r.choice([f"request id {u}", f"trace {u}", f"user {u}", f"id={u}", f"/items/{u}"])


def _sha(r: random.Random) -> str:
    sha = _rand(r, HEXL, 40)
    return r.choice(
        [
            f"commit {sha}",
            f"fixed in {sha[:7]}",
            f"merge {sha}",
            f"git checkout {sha[:12]}",
            f"sha256:{_rand(r, HEXL, 64)}",
            f"(see {sha[:10]})",
        ]
    )


def _isbn(r: random.Random) -> str:
    return r.choice([f"ISBN {_isbn13(r)}", f"ISBN-13: {_isbn13(r)}", f"ISBN {_isbn10(r)}"])


def _iban_fail(r: random.Random) -> str:
    c = _iban_compact(r)
    bad = c[:2] + f"{(int(c[2:4]) + r.randint(1, 96)) % 97 + 2:02d}"[-2:] + c[4:]
    if cs.iban_ok(bad):
        bad = c[:-1] + str((int(c[-1], 36) + 1) % 10)
    return format_iban(r, bad) if not cs.iban_ok(bad) else "DE00 0000 0000 0000 0000 00"


def _ssn_invalid(r: random.Random) -> str:
    area = r.choice(["000", "666", str(r.randint(900, 999))])
    return f"{area}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def _ip_invalid(r: random.Random) -> str:
    return r.choice(
        [
            f"{r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}",
            f"{r.randint(1, 255)}.{r.randint(0, 255)}.{r.randint(300, 999)}.1",
            f"{r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}",
            ".".join(str(r.randint(1, 99)) for _ in range(5)),
        ]
    )


def _mac(r: random.Random) -> str:
    return ":".join(_rand(r, "0123456789ABCDEF", 2) for _ in range(6))


def _misc(r: random.Random) -> str:
    return r.choice(
        [
            f"#{_rand(r, HEXL, 6)}",
            f"{r.uniform(-90, 90):.4f}, {r.uniform(-180, 180):.4f}",
            f"localhost:{r.randint(1024, 65535)}",
            f"SKU {_digits(r, 4)}-{_digits(r, 4)}",
            f"{r.randint(1, 999)} ms",
            f"{r.uniform(0, 100):.2f}%",
            f"batch {_digits(r, 9)}",
            f"IMEI {_digits(r, 15)}",
            f"serial {_rand(r, UPPER_DIGITS, 12)}",
            "std::vector<int>",
            f"{r.choice(['12345678', '87654321'])}{r.choice('ABCDEFGH')}",
        ]
    )


def _secret_word(r: random.Random) -> str:
    return r.choice(
        [
            "the key point is latency",
            "token count 4096",
            "password reset link expires in 24 hours",
            "api_key = os.environ['OPENAI_API_KEY']",
            "token = get_token_from_cache(user_id)",
            "secret_name = 'prod/db/credentials'",
            "max_tokens=1024",
            "keyboard shortcut Ctrl+K",
            "cache key user_session_settings_2024",
            "authToken: refreshAccessTokenIfExpired()",
            "password: ********",
            "password=${DB_PASSWORD}",
            "the secret sauce is caching",
            'key = f"user:{user_id}:profile"',
            "Bearer token required (see docs/auth.md)",
            "token_type: bearer_refresh_rotation_v2",
            "secretsmanager.get_secret_value(SecretId=name)",
            "key: translations/en/messages_common_v3.json",
            "the tokenizer splits numbers badly",
            "password is incorrect",
            "apiKey: process.env.STRIPE_SECRET_KEY",
        ]
    )


NEGATIVES: dict[str, Callable[[random.Random], str]] = {
    "order_number": _order,
    "invoice_id": _invoice,
    "date": _date,
    "time": _time,
    "version": _version,
    "price": _price,
    "short_digits": _short_digits,
    "uuid": _uuid,
    "git_sha": _sha,
    "isbn": _isbn,
    "tracking_number": _tracking,
    "luhn_fail": _luhn_failing_card,
    "iban_fail": _iban_fail,
    "ssn_invalid": _ssn_invalid,
    "ip_invalid": _ip_invalid,
    "mac_address": _mac,
    "misc_number": _misc,
    "secret_word": _secret_word,
}


# --- carriers: the sentence around a value, per entity ------------------------------

# "{}" is where the value goes; carriers vary the context word (or give none) and the
# punctuation around the value
CARRIERS: dict[str, list[str]] = {
    "email": [
        "You can reach me at {}.",
        "my email is {} if that helps",
        "Contact: {}",
        "(cc {})",
        "send it to <{}> please",
        "mailto:{}",
        '"{}"',
        "{}, {}",
        "- {}\n",
        "Forwarding from {} -- see below.",
        "Reply-To: {}",
        "login {} keeps failing",
    ],
    "phone": [
        "Call me on {}.",
        "my number is {}",
        "Tel: {}",
        "mobile {} (after 6pm)",
        "phone: {}, thanks",
        "reach the on-call engineer at {}",
        "({})",
        "WhatsApp {}",
        "Fax {}.",
        "{} is my direct line",
        "ring {} any time",
        "- {}\n",
    ],
    "payment_card": [
        "my card number is {}",
        "Card: {} exp 09/27",
        "charged to {} twice",
        "cc {}",
        "{} (expires 11/26, CVV 123)",
        "here it is: {}",
        "Visa {}",
        "refund to {} please",
        "payment failed for {}.",
        "card ending ... no, the full one is {}",
        "[{}]",
        "I paid order #88421 with card {}",
        "use {} for the renewal",
        "debit card {} was declined",
    ],
    "iban": [
        "IBAN: {}",
        "please wire to {}",
        "bank details: {} (BIC DEUTDEFF)",
        "account {}",
        "IBAN {}.",
        "transfer the refund to {}, thanks",
        "- {}\n",
        "my iban is {}",
    ],
    "national_id": [
        "SSN {}",
        "my social security number is {}",
        "NI number: {}",
        "DNI {}",
        "NIE: {}",
        "BSN {}",
        "burgerservicenummer {}.",
        "patient ID (SSN): {}",
        "national insurance {}",
        "ID {}",
        "documento {}",
        "{} (tax id)",
    ],
    "ip_address": [
        "from {}",
        "server at {}:8080",
        "GET /api/v1/users 200 {}",
        "client_ip={}",
        "ssh admin@{}",
        "[{}]:443",
        "blocked {}.",
        "host {} is down",
        "- {}\n",
        "inet {}/24",
    ],
    "api_key": [
        'OPENAI_API_KEY="{}"',
        "export GITHUB_TOKEN={}",
        "here's my key {}",
        "key: {}",
        "Authorization: Bearer {}",
        "client = Client(api_key='{}')",
        "oops, I pasted {} in the channel",
        '"apiKey": "{}",',
        "{}",
        "use {} for staging",
        "aws_access_key_id = {}",
        "token {}",
    ],
    "secret": [
        "JWT_SECRET={}",
        "password: {}",
        "my password is {}",
        'client_secret: "{}"',
        "token={}",
        "Authorization: Bearer {}",
        "secret {}",
        "db_password = '{}'",
        "the API key is {}",
        "refresh_token: {}",
        "SESSION_KEY={}",
        "pwd={}",
    ],
}


def _national(r: random.Random) -> tuple[str, str]:
    """A national id and the carrier that names it (an ID needs its label to be one)."""
    kind = r.randrange(6)
    if kind == 0:
        a, g, s = _ssn_parts(r)
        if r.random() < 0.15:
            return f"{a}.{g}.{s}", r.choice(["SSN {}", "ssn: {}", "SSN#{}"])
        return r.choice([f"{a}-{g}-{s}", f"{a} {g} {s}"]), r.choice(
            CARRIERS["national_id"] + ["SSN#{}"]
        )
    if kind == 1:
        a, g, s = _ssn_parts(r)
        return f"{a}{g}{s}", r.choice(["SSN {}", "my social security number is {}", "SSN: {}."])
    if kind == 2:
        return _nino(r), r.choice(["NI number: {}", "national insurance {}", "NINO {}.", "{}"])
    if kind == 3:
        return _dni(r), r.choice(["DNI {}", "NIE: {}", "documento {}", "{} (tax id)", "ID {}"])
    if kind == 4:
        return _bsn(r), r.choice(["BSN {}", "burgerservicenummer {}.", "BSN: {}", "mijn BSN is {}"])
    return _nhs(r), r.choice(["NHS number {}", "NHS no. {}", "my NHS number is {}", "NHS: {}"])


def _nhs(r: random.Random) -> str:
    while True:
        d = _digits(r, 9)
        check = 11 - sum((10 - i) * int(c) for i, c in enumerate(d)) % 11
        if check != 10:
            n = d + str(0 if check == 11 else check)
            return f"{n[:3]} {n[3:6]} {n[6:]}" if r.random() < 0.7 else n


def _secret_value(r: random.Random, carrier: str) -> str:
    if "password" in carrier or "pwd" in carrier:
        return password(r) if r.random() < 0.6 else generic_token(r)
    return generic_token(r)


def _value(r: random.Random, entity: str) -> tuple[str, str]:
    """(value, carrier) for one labelled identifier."""
    if entity == "national_id":
        return _national(r)
    carrier = r.choice(CARRIERS[entity])
    if entity == "email":
        return email(r), carrier
    if entity == "phone":
        if r.random() < 0.08:
            return f"{r.randint(2, 9)}{_digits(r, 9)}", r.choice(["call me on {}", "phone {}"])
        return phone(r), carrier
    if entity == "payment_card":
        return card(r), carrier
    if entity == "iban":
        if r.random() < 0.05:
            return iban(r).lower(), r.choice(["iban {}", "my iban is {}", "IBAN: {}"])
        return iban(r), carrier
    if entity == "ip_address":
        if r.random() < 0.3:  # an IPv6 address with a port goes in brackets
            return ipv6(r), carrier.replace("{}:8080", "[{}]:8080")
        return ipv4(r), carrier
    if entity == "api_key":
        return api_key(r), carrier
    kind = r.random()
    if kind < 0.2:
        return jwt(r), r.choice(
            ["Authorization: Bearer {}", "token={}", "{}", "cookie: session={}"]
        )
    if kind < 0.3:
        return pem(r), r.choice(["here is the key:\n{}\n", "```\n{}\n```", "{}"])
    if kind < 0.36:  # the password in a connection URL
        scheme = r.choice(["postgres", "mysql", "redis", "amqp", "mongodb+srv", "https"])
        host = r.choice(["db.internal", "cache.prod.example.com", "mq", "localhost"])
        pw = password(r).replace("@", "%40").replace("#", "%23")
        return pw, f"{scheme}://{r.choice(FIRST)}:{{}}@{host}:5432/app"
    if kind < 0.4:  # a quoted passphrase
        words = " ".join(r.choice(["correct", "horse", "battery", "staple", "blue", "river"])
                         for _ in range(r.randint(3, 5)))  # fmt: skip
        return words, r.choice(["the wifi password is '{}'", 'passphrase: "{}"'])
    return _secret_value(r, carrier), carrier


# --- genres: filler and frame ---------------------------------------------------------

FILLER: dict[str, list[str]] = {
    "ticket": [
        "Since this morning {p} shows an error when I try to log in.",
        "I already cleared the cache and tried another browser.",
        "This is blocking our whole team, please escalate.",
        "The problem started after the last update.",
        "Could you check what is going on with {p}?",
        "I attached a screenshot of the error message.",
        "We are on the enterprise plan with 40 seats.",
        "It worked fine last week.",
        "Please let me know if you need anything else from my side.",
        "The export times out after about two minutes.",
    ],
    "chat": [
        "hey, quick question",
        "lol that's exactly what happened to me",
        "ok thanks!",
        "can you check {p} again?",
        "i think it's broken again",
        "no worries",
        "brb, meeting",
        "did the deploy go out?",
        "sounds good, ship it",
        "wait what",
        "it's still failing for me tbh",
    ],
    "code": [
        "import os\nimport requests",
        "def handler(event, context):",
        "    return {'status': 200}",
        "# TODO: move this to the config file",
        "logger.info('retrying request')",
        "if __name__ == '__main__':\n    main()",
        "const res = await fetch(url, { method: 'POST' });",
        "timeout: 30\nretries: 3",
        "for i in range(10):\n    print(i)",
        "SELECT id, name FROM users LIMIT 10;",
        "docker compose up -d",
        "$ kubectl get pods -n prod",
    ],
    "email": [
        "I hope this message finds you well.",
        "Following up on our call yesterday about {p}.",
        "Please find the details below.",
        "Let me know if you have any questions.",
        "Thanks in advance for your help.",
        "We would like to renew the contract for another year.",
        "The meeting is moved to Thursday.",
        "Attached is the signed agreement.",
    ],
}

GENRES = tuple(FILLER)


class _Builder:
    """Appends text, remembering where labelled values and negatives land."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.spans: list[Span] = []
        self.negatives: list[Span] = []

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)

    def value(self, kind: str, v: str, carrier: str, negative: bool = False) -> None:
        """The carrier with `v` in each "{}" (each copy labelled)."""
        pieces = carrier.split("{}")
        into = self.negatives if negative else self.spans
        self.add(pieces[0])
        for piece in pieces[1:]:
            into.append(Span(kind, self.n, self.n + len(v)))
            self.add(v)
            self.add(piece)

    def text(self) -> str:
        return "".join(self.parts)


def _sep(r: random.Random, genre: str) -> str:
    return "\n" if genre == "code" else r.choice([" ", " ", " ", "\n", "  "])


def _filler(r: random.Random, genre: str) -> str:
    return r.choice(FILLER[genre]).replace("{p}", r.choice(PRODUCTS))


def _negative_sentence(r: random.Random, b: _Builder, kind: str, genre: str) -> None:
    v = NEGATIVES[kind](r)
    carrier = r.choice(
        ["{}", "see {}.", "({})", "ref: {}", "{},", "re: {}", "- {}\n", "as of {}", "[{}]"]
        if genre != "code"
        else ["# {}", "{}", "log: {}", "// {}"]
    )
    b.value(kind, v, carrier, negative=True)


def _one(
    r: random.Random, genre: str, n_pos: int, n_neg: int, entities: tuple[str, ...]
) -> Labelled:
    wanted = entities or ENTITIES
    b = _Builder()
    if genre == "email":
        b.value("email", email(r), "From: {}\n")
        b.add(f"Subject: {r.choice(['Re: ', '', 'Fwd: '])}question about {r.choice(PRODUCTS)}\n\n")
    elif genre == "ticket":
        b.add(f"Ticket: {r.choice(PRODUCTS)} not working\n")
    items: list[tuple[str, str]] = [("pos", r.choice(wanted)) for _ in range(n_pos)]
    items += [("neg", r.choice(list(NEGATIVES))) for _ in range(n_neg)]
    items += [("fill", "") for _ in range(r.randint(1, 4))]
    r.shuffle(items)
    for what, kind in items:
        if what == "pos":
            v, carrier = _value(r, kind)
            b.value(kind, v, carrier)
        elif what == "neg":
            _negative_sentence(r, b, kind, genre)
        else:
            b.add(_filler(r, genre))
        b.add(_sep(r, genre))
    if genre in ("email", "ticket"):
        b.add(r.choice(["Best regards,\n", "Thanks,\n", "Cheers,\n"]) + r.choice(FIRST).title())
    return Labelled(b.text(), tuple(b.spans), tuple(b.negatives), genre)


def generate(n: int, seed: int, entities: tuple[str, ...] = ()) -> list[Labelled]:
    """`n` labelled texts, the same for the same seed. About a quarter carry no
    identifier; the rest carry one to three (entities drawn from `entities`, default
    all). Every text carries one to four hard negatives."""
    r = random.Random(seed)
    out: list[Labelled] = []
    for _ in range(n):
        genre = r.choice(GENRES)
        n_pos = 0 if r.random() < 0.25 else r.randint(1, 3)
        out.append(_one(r, genre, n_pos, r.randint(1, 4), entities))
    return out


def sized(n: int, seed: int, length: int = 500, with_identifier: bool = True) -> list[str]:
    """`n` texts of exactly `length` characters (for latency): hard negatives and
    filler, and, with `with_identifier`, one identifier in the first half."""
    r = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        genre = r.choice(GENRES)
        b = _Builder()
        if with_identifier:
            v, carrier = _value(r, r.choice(ENTITIES))
            b.value("x", v, carrier)
            b.add(" ")
        while b.n < length:
            if r.random() < 0.4:
                _negative_sentence(r, b, r.choice(list(NEGATIVES)), genre)
            else:
                b.add(_filler(r, genre))
            b.add(_sep(r, genre))
        out.append(b.text()[:length])
    return out


# --- scoring -------------------------------------------------------------------------


@dataclass
class EntityScore:
    """Counts for one entity: labelled spans found / missed, findings true / false."""

    found: int = 0
    missed: int = 0
    true: int = 0
    false: int = 0

    @property
    def recall(self) -> float:
        n = self.found + self.missed
        return self.found / n if n else float("nan")

    @property
    def precision(self) -> float:
        n = self.true + self.false
        return self.true / n if n else float("nan")


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def evaluate(
    detect: Callable[[str], Iterable[Finding]], data: Iterable[Labelled]
) -> tuple[dict[str, EntityScore], dict[str, int]]:
    """Per-entity counts (a finding is true when it overlaps a labelled span of the
    same entity; a labelled span is found when a finding of its entity overlaps it),
    and the false findings by what they overlap: a hard negative's kind, another
    entity's label ("label:<entity>") or nothing ("unlabelled")."""
    scores: dict[str, EntityScore] = {}
    false_by: dict[str, int] = {}
    for item in data:
        findings = list(detect(item.text))
        for s in item.spans:
            sc = scores.setdefault(s.kind, EntityScore())
            if any(
                f.entity == s.kind and _overlaps(f.start, f.end, s.start, s.end) for f in findings
            ):
                sc.found += 1
            else:
                sc.missed += 1
        for f in findings:
            sc = scores.setdefault(f.entity, EntityScore())
            if any(
                s.kind == f.entity and _overlaps(f.start, f.end, s.start, s.end) for s in item.spans
            ):
                sc.true += 1
                continue
            sc.false += 1
            why = next(
                (n.kind for n in item.negatives if _overlaps(f.start, f.end, n.start, n.end)),
                None,
            ) or next(
                (
                    f"label:{s.kind}"
                    for s in item.spans
                    if _overlaps(f.start, f.end, s.start, s.end)
                ),
                "unlabelled",
            )
            key = f"{f.entity} <- {why}"
            false_by[key] = false_by.get(key, 0) + 1
    return scores, false_by
