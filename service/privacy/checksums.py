"""Checksums and number tables the recognisers validate candidates with.

A pattern alone flags too many digit runs (order numbers, invoice ids, tracking
numbers); a checksum turns "looks like a card" into "is a card number" for all but a
small fraction of random runs, which is what keeps precision high. Pure functions on
strings of digits (or of upper-case letters and digits), no allocation beyond a few
integers, so the detector can call them on every candidate.
"""

from __future__ import annotations

# --- payment cards -------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of ISO/IEC 7812 on a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(body: str) -> str:
    """The digit that makes `body + digit` pass the Luhn check (for the generator)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = ord(ch) - 48
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


# (brand, IIN ranges as (low, high) on the leading digits of equal width, lengths)
CARD_BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...], frozenset[int]], ...] = (
    ("visa", (("4", "4"),), frozenset({13, 16, 19})),
    ("mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    ("amex", (("34", "34"), ("37", "37")), frozenset({15})),
    (
        "discover",
        (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")),
        frozenset({16, 17, 18, 19}),
    ),
    ("jcb", (("3528", "3589"),), frozenset({16, 17, 18, 19})),
    (
        "diners",
        (("300", "305"), ("36", "36"), ("38", "39")),
        frozenset({14, 15, 16, 17, 18, 19}),
    ),
    ("unionpay", (("62", "62"),), frozenset({16, 17, 18, 19})),
    (
        "maestro",
        (
            ("5018", "5018"),
            ("5020", "5020"),
            ("5038", "5038"),
            ("5893", "5893"),
            ("6304", "6304"),
            ("6759", "6759"),
            ("6761", "6763"),
        ),
        frozenset({13, 14, 15, 16, 17, 18, 19}),
    ),
    ("mir", (("2200", "2204"),), frozenset({16, 17, 18, 19})),
)


def card_brand(digits: str) -> str | None:
    """The card network whose IIN range and length admit `digits`, or None."""
    n = len(digits)
    for brand, ranges, lengths in CARD_BRANDS:
        if n not in lengths:
            continue
        for low, high in ranges:
            head = digits[: len(low)]
            if low <= head <= high:
                return brand
    return None


def is_card_number(digits: str) -> bool:
    """A known network's IIN and length, and the Luhn check."""
    return card_brand(digits) is not None and luhn_ok(digits)


# --- IBAN ----------------------------------------------------------------------------

# ISO 13616 lengths for the countries the detector knows (the SEPA area and a few more).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22,
    "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24,
    "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_mod97(iban: str) -> int:
    """ISO 7064 mod 97-10 of an IBAN (upper case, no spaces): 1 when it is valid."""
    rearranged = iban[4:] + iban[:4]
    total = 0
    for ch in rearranged:
        o = ord(ch)
        if 48 <= o <= 57:
            total = (total * 10 + o - 48) % 97
        else:  # A=10 ... Z=35: two digits
            total = (total * 100 + o - 55) % 97
    return total


def iban_ok(iban: str) -> bool:
    """Known country, its length, two check digits and mod 97 == 1."""
    length = IBAN_LENGTHS.get(iban[:2])
    return (
        length is not None
        and len(iban) == length
        and iban[2:4].isdigit()
        and iban[4:].isalnum()
        and iban_mod97(iban) == 1
    )


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits of the IBAN `country ?? bban` (for the generator)."""
    return f"{98 - iban_mod97(country + '00' + bban):02d}"


# --- national identifiers ------------------------------------------------------------


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN validity rules (SSA): area not 000, 666 or 900-999; group not 00;
    serial not 0000; and not the two numbers published in advertising."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return f"{area}{group}{serial}" not in ("078051120", "219099999")


# NINO: first letter not D F I Q U V; second not D F I O Q U V; prefix not in this set
_NINO_BAD_PREFIX = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def nino_prefix_ok(prefix: str) -> bool:
    """The two-letter UK National Insurance number prefix is one HMRC issues."""
    return prefix[0] in NINO_FIRST and prefix[1] in NINO_SECOND and prefix not in _NINO_BAD_PREFIX


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_letter(number: int) -> str:
    """The control letter of a Spanish DNI (or NIE, after X/Y/Z -> 0/1/2)."""
    return DNI_LETTERS[number % 23]


def dni_ok(body: str, letter: str) -> bool:
    """Spanish DNI (8 digits) or NIE (X/Y/Z + 7 digits) with its control letter."""
    lead = body[0]
    if lead in "XYZ":
        body = str("XYZ".index(lead)) + body[1:]
    return body.isdigit() and dni_letter(int(body)) == letter


def bsn_ok(digits: str) -> bool:
    """Dutch BSN 11-check ("elfproef"): 9*d1 + 8*d2 + ... + 2*d8 - d9 = 0 (mod 11)."""
    if len(digits) == 8:
        digits = "0" + digits
    if len(digits) != 9 or digits == "000000000":
        return False
    total = sum((9 - i) * (ord(c) - 48) for i, c in enumerate(digits[:8]))
    return (total - (ord(digits[8]) - 48)) % 11 == 0


def nhs_ok(digits: str) -> bool:
    """UK NHS number (10 digits): weights 10..2 on the first nine, 11 - sum mod 11 is
    the tenth digit (11 -> 0; 10 never issued)."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    check = 11 - sum((10 - i) * (ord(c) - 48) for i, c in enumerate(digits[:9])) % 11
    if check == 11:
        check = 0
    return check != 10 and check == ord(digits[9]) - 48
