"""Sensitive-data detection: which identifiers and secrets a text carries, and where.

The router needs one thing from a query before it chooses a model: the set of
sensitive entity types in it (a rule then restricts the candidates to models allowed
to see them). So detection is pattern based, pure and fast (well under 0.2 ms for a
500-character query): the numeric runs of a text are found once and only those the
digit recognisers can use are looked at (no card check on a run of fewer than 13
digits), letter-led patterns start with a plain character class so the scan skips
ahead in C, secret words are found with str.find on the lower-cased text, every
other pattern has a cheap pre-filter ('@', '://', "-----BEGIN", "eyJ", the API key
prefixes), no pattern backtracks catastrophically, and a checksum or a context rule
stands behind every pattern that would otherwise flag ordinary numbers.

A `Finding` holds the entity type, character offsets and a score, never the matched
text, so that a finding can be logged as it is.

What each entity covers (and what it deliberately does not):

- ``email``: local@domain.tld, the domain with at least one dot and an alphabetic
  TLD, or an IP literal (``j.smith@[192.168.1.1]``); image names such as
  ``icon@2x.png``, ``@decorators``, ``user@localhost`` and the user part of a URL
  (``https://token@github.com``) are not e-mails.
- ``phone``: E.164 (``+`` or ``00``, a country code, 8-15 digits, spaces, dots,
  dashes or brackets between groups: ``+44 (0)20 7946 0958``); North American
  ``(415) 555-0132`` / ``415-555-0132`` / ``415.555.0132`` (area and exchange codes
  start with 2-9); European trunk-prefix numbers (``020 7946 0958``,
  ``030 12345678``, ``089/1234567``, ``(030) 1234 5678``, ``01 23 45 67 89``: 0
  then 1-9, 9-12 digits, one kind of separator, not a date, not the 4-4-4 grouping
  of parcel numbers). A bare run of 10-12 digits counts only right after a word
  such as "phone", "call me on" or "mobile no.". Seven digits or fewer
  (``555-0132``, extensions, PINs) are never a phone.
- ``payment_card``: 13-19 digits, contiguous or in groups of four (Amex/Diners
  4-6-5 / 4-6-4), spaces or dashes used consistently (or dots between fours); a
  known network's IIN range and length (Visa, Mastercard incl. 2-series, Amex,
  Discover, JCB, Diners, UnionPay, Maestro, Mir); the Luhn check. A valid number
  labelled as something else ("order no.", "invoice #", "tracking", "ISBN", with no
  "card"/"visa"/"payment" word near) is not a card: one random digit run in ~20
  passes IIN and Luhn by chance. A 19-digit run is one number (not a card and
  three digits); a card inside a longer run of fours is a parcel number's digits.
- ``iban``: country code, check digits and BBAN, contiguous or in groups of four
  (spaces or dashes); the country's length (checksums.IBAN_LENGTHS) and ISO 7064
  mod 97. Upper case, or any case in a text that says "IBAN".
- ``national_id``: US SSN (``123-45-6789``, spaces too, dots after "SSN"; area not
  000/666/9xx, group not 00, serial not 0000; nine bare digits only after "SSN" /
  "social security"); UK National Insurance number (HMRC's prefix letters, suffix
  A-D); Spanish DNI and NIE with their mod-23 control letter (the checksum-validated
  EU format); Dutch BSN with the 11-check, only after "BSN" / "burgerservicenummer"
  / "sofinummer" (one nine-digit run in eleven passes the 11-check by chance); UK
  NHS number with its mod-11 check, only after "NHS" (its 3-3-4 grouping is a
  phone's). Not covered: other national formats (German Steuer-ID, Italian codice
  fiscale, French NIR, ...).
- ``ip_address``: IPv4 (four octets each <= 255, not part of a longer dotted run,
  not right after "version", "v", "build", ...) and IPv6 (full or compressed, with
  at least two non-empty groups and a digit, validated by `ipaddress`; ``::1``,
  ``std::vector`` and MAC addresses are not flagged).
- ``api_key``: provider keys by their prefix and shape: OpenAI/Anthropic ``sk-``,
  ``sk-proj-``, ``sk-ant-`` (body with upper, lower and digits, so ``sk-learn-...``
  is not a key), GitHub ``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_``, Slack
  ``xox[baprs]-``, AWS ``AKIA``/``ASIA`` + 16, Google ``AIza`` + 35, Stripe
  ``sk_live_``/``rk_live_`` (and ``_test_``), GitLab ``glpat-``, Hugging Face
  ``hf_`` (mixed case), SendGrid ``SG.x.y``, npm ``npm_``, PyPI ``pypi-AgE...``,
  Twilio ``SK`` + 32 hex.
- ``secret``: PEM private-key blocks, JWTs (``eyJ...\\.eyJ...\\.sig``), the password
  in a URL (``postgres://user:pw@host``), a password assigned or stated
  (``password: Summer2024!``, ``pwd=letmein!``, "my password is 'a b c'"; in prose
  an unquoted all-lower-case word such as "wrong!" is not taken for one), and
  generic high-entropy tokens after a secret word (key, token, secret, password,
  credential, bearer, auth; as a word or the last camelCase part: "apiKey", not
  "keyboard", "tokenizer" or "keyId"): the value when the word is assigned
  (``KEY=...``, ``"token": "..."``), else the first token within 40 characters on
  the same line, stopping at another name's value (``id=...``) or a value-like word
  (``Passw0rd&3``). A token is at least 24 characters of the base64/hex alphabet,
  not a URL path, and either all-hex with Shannon entropy >= 3.0 bits/char, or with
  digits, entropy >= 3.6 and class changes between lower, upper and digit on >= 30%
  of adjacent pairs (random base62 tokens of 24+ characters: p01 entropy 3.9, p01
  class-change ratio 0.35; camelCase and snake_case identifiers mostly fall below
  one or the other), or letters only with both cases, two upper-case pairs ("BF";
  camelCase rarely has any) and the same entropy and class-change floors. So a UUID
  or a git SHA is flagged only right after such a word ("API key: 550e8400-...",
  "token 3f786850e3..."), never in ordinary text ("request id 550e8400-...",
  "commit 3f786850e3...").

Overlapping findings resolve to the highest score (then the longest), so a text
position is reported as one entity.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from service.privacy import checksums as cs

ENTITIES: tuple[str, ...] = (
    "email",
    "phone",
    "payment_card",
    "iban",
    "national_id",
    "ip_address",
    "api_key",
    "secret",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One sensitive span: its entity type, character offsets [start, end) in the text
    and a confidence in [0, 1]. It never holds the matched text, so it may be logged."""

    entity: str
    start: int
    end: int
    score: float


class Detector(Protocol):
    """Anything that finds sensitive spans in a text (patterns, an NER model, both)."""

    def detect(self, text: str) -> list[Finding]: ...


# --- helpers -------------------------------------------------------------------------

_NONDIGIT = bytes(b for b in range(256) if not 48 <= b <= 57)
# a run of digits with single separators (space . - /) or brackets between them; every
# numeric entity lies inside one, so the digit recognisers look only at these
_NUMERIC = re.compile(r"[+(]?[0-9](?:[0-9()]|[ .\-/](?=[(0-9]))*")
MIN_NUMERIC = 7  # the shortest numeric entity: "1.1.1.1", a NIE's seven digits


def _count_digits(s: str) -> int:
    """ASCII digits in `s` (in C: encode, then delete every other byte)."""
    return len(s.encode("ascii", "ignore").translate(None, _NONDIGIT))


class _Scan:
    """What several recognisers need from one text, computed once and on demand: its
    digit count, its numeric runs of at least MIN_NUMERIC characters (start, end,
    digits) and its lower-case form."""

    __slots__ = ("text", "_digits", "_chunks", "_lower")

    def __init__(self, text: str) -> None:
        self.text = text
        self._digits = -1
        self._chunks: list[tuple[int, int, int]] | None = None
        self._lower: str | None = None

    @property
    def digits(self) -> int:
        if self._digits < 0:
            self._digits = _count_digits(self.text)
        return self._digits

    @property
    def chunks(self) -> list[tuple[int, int, int]]:
        if self._chunks is None:
            self._chunks = []
            if self.digits >= 4:
                for m in _NUMERIC.finditer(self.text):
                    s, e = m.span()
                    if e - s >= MIN_NUMERIC:
                        self._chunks.append((s, e, _count_digits(m.group())))
        return self._chunks

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower


def _is_alnum(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _digit_bounded(text: str, start: int, end: int, glue: str = "#+/.-") -> bool:
    """No letter, digit, '_' or `glue` character joined to the span on its left, no
    letter, digit, '_', '/', '-' or decimal on its right, and no group of digits one
    space away when the span itself groups its digits with spaces (then it would be
    part of a longer run: "0171 1234567 89")."""
    if start > 0:
        b = text[start - 1]
        if _is_alnum(b) or b in glue:
            return False
    n = len(text)
    if end < n:
        a = text[end]
        if _is_alnum(a) or a in "/-" or (a in ".," and end + 1 < n and text[end + 1].isdigit()):
            return False
    if " " in text[start:end]:
        if (
            start > 1
            and text[start].isdigit()
            and text[start - 1] == " "
            and text[start - 2].isdigit()
        ):
            k = start - 2
            while k > 0 and text[k - 1].isdigit():
                k -= 1
            if k == 0 or text[k - 1].isspace():  # a plain group of digits before
                return False
        if end + 1 < n and text[end] == " " and text[end + 1].isdigit():
            k = end + 1
            while k < n and text[k].isdigit():
                k += 1
            if (
                k == n
                or text[k].isspace()
                or (text[k] in ".,;:)" and (k + 1 == n or text[k + 1].isspace()))
            ):
                return False  # a plain group of digits after
    return True


def _word_bounded(text: str, start: int, end: int) -> bool:
    """No letter, digit or '_' on either side of the span."""
    return (start == 0 or not _is_alnum(text[start - 1])) and (
        end >= len(text) or not _is_alnum(text[end])
    )


def _near_before(pattern: re.Pattern[str], text: str, start: int, window: int) -> bool:
    return pattern.search(text, max(0, start - window), start) is not None


# a label that makes the number after it something else (an order, a parcel, a
# book): the word, then at most "no." / "number" / "#" / ":" before the number
_NOT_CARD_CTX = re.compile(
    r"(?i)\b(?:order|invoice|inv|tracking|track|shipment|parcel|isbn(?:-1[03])?|ref"
    r"|reference|ticket|case|po|sku|serial|imei|transaction|txn|confirmation|booking"
    r"|account|acct|customer|member)\b(?:\s*(?:no\.?|nr\.?|num(?:ber)?|id|#|:|=|-)){0,3}\s*$"
)
_CARD_CTX = re.compile(r"(?i)\b(?:card|visa|master\w*|amex|credit|debit|cc|payment|pay)\b")
# the phone word right before a bare digit run: "call me on", "Tel.:", "mobile no."
_PHONE_LEAD = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|whatsapp|sms|fax|call|ring|text)"
    r"(?: (?:me|us))?(?: (?:on|at))?(?: ?(?:no|number|nr)\.?)?[\s:#.]*$"
)
_NOT_IP_CTX = re.compile(
    r"(?i)(?:\bversion|\bver\.?|\bv|\brelease|\bbuild|\bfirmware|\brev|\bversions?)\s*$"
)
_ISBN_CTX = re.compile(r"(?i)\bisbn(?:-1[03])?\b")
_SSN_CTX = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\b")
_BSN_CTX = re.compile(r"(?i)\b(?:bsn|burgerservicenummer|sofinummer|sofi-nummer)\b")

Emit = list[Finding]
Recogniser = Callable[[str, _Scan, Emit], None]


# --- e-mail --------------------------------------------------------------------------

_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-'")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){1,8}")
_IP_LITERAL = re.compile(r"\[\d{1,3}(?:\.\d{1,3}){3}\]")
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "pdf"})


def _email(text: str, _sc: _Scan, out: Emit) -> None:
    at = text.find("@")
    while at != -1:
        i = at
        lo = max(0, at - 64)
        while i > lo and text[i - 1] in _LOCAL:
            i -= 1
        while i < at and text[i] in ".'":
            i += 1
        ws = max(text.rfind(" ", 0, i), text.rfind("\n", 0, i))
        if text.find("://", ws + 1, i) != -1:  # https://user@host: a URL's user, not a mailbox
            at = text.find("@", at + 1)
            continue
        if i < at and text.startswith("[", at + 1):  # j.smith@[192.168.1.1]
            lit = _IP_LITERAL.match(text, at + 1)
            if lit is not None:
                out.append(Finding("email", i, lit.end(), 0.9))
        m = _DOMAIN.match(text, at + 1)
        if m is not None and i < at and text[at - 1] != "." and (i == 0 or text[i - 1] != "@"):
            labels = m.group().split(".")
            # back off trailing labels that cannot be a TLD ("user@mail.example.com.123")
            while len(labels) > 1 and not (labels[-1].isalpha() and 2 <= len(labels[-1]) <= 24):
                labels.pop()
            tld = labels[-1].lower()
            if len(labels) > 1 and tld not in _FILE_TLDS and not labels[-1].startswith("-"):
                end = at + 1 + len(".".join(labels))
                if end >= len(text) or not _is_alnum(text[end]):
                    out.append(Finding("email", i, end, 0.95))
        at = text.find("@", at + 1)


# --- phone ---------------------------------------------------------------------------

# each digit pattern starts where no word, digit run or dotted number continues, so a
# match cannot begin inside a longer token and hide the real one after it
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9][\d .\-()]{6,24}\d")
_PHONE_NANP = re.compile(
    r"(?<![\w+#./\-])(?:\+?1([ .\-]))?(?:\((?P<a1>\d{3})\) ?|(?P<a2>\d{3})(?P<s>[ .\-]))"
    r"\d{3}[ .\-]\d{4}"
)
_PHONE_BARE = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{9,11}(?![0-9])")
_PHONE_00 = re.compile(r"00(?P<cc>[1-9]\d{0,2}) [\d .\-()]{5,22}\d")
# one- and two-digit country calling codes (three-digit ones are taken as they come)
_COUNTRY_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)
_PARCEL_444 = re.compile(r"\d{4} \d{4} \d{4}$")  # 0024 2181 8888: a parcel number
_PHONE_TRUNK_PAREN = re.compile(
    r"\(0[1-9]\d{0,3}\) ?\d{2,8}(?:([ .\-/])\d{2,8}(?:\1\d{2,8}){0,2})?"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+#./\-])0[1-9]\d{0,3}(?:[ .\-/]\d{2,8}){1,4}")
# dd.mm.yyyy (or with / or -), alone or before a time: a date, not a phone
_DATE_LIKE = re.compile(r"\d{1,2}([./\-])\d{1,2}\1(?:\d{4}|\d{2})(?: |$)")
_SEPS = frozenset(" .-/")
# "NL71 PFOM " right before a number: the number continues an IBAN-shaped run
_IBAN_RUN = re.compile(r"\b[A-Z]{2}\d{2}(?:([ \-])[A-Z0-9]{4}(?:\1[A-Z0-9]{4})*)?[ \-]$")


def _intl_end(s: str) -> int:
    """The length of the valid prefix of an international-number candidate: it ends
    on a digit outside brackets, before two separators in a row or a bracket out of
    place ("+61 416 934 401 (43.752,00 EUR" ends after "401")."""
    depth = 0
    prev_sep = False
    last = 0
    for k in range(1, len(s)):
        c = s[k]
        if c == "(":
            if depth:
                break
            depth = 1
        elif c == ")":
            if not depth:
                break
            depth = 0
        elif c in _SEPS:
            if prev_sep:
                break
            prev_sep = True
            continue
        elif not depth:
            last = k + 1
        prev_sep = False
    return last


def _trunk_ok(cand: str) -> bool:
    """9-12 digits, one kind of separator, not a date, not a parcel number's 4-4-4."""
    digits = sum(c.isdigit() for c in cand)
    if not 9 <= digits <= 12:
        return False
    if digits == 12 and len(cand) == 14 and cand[4] == cand[9] == " ":
        return False  # 0xxx xxxx xxxx: a parcel number's grouping, not a phone's
    if len({c for c in cand if not c.isdigit()}) > 1:
        return False
    return _DATE_LIKE.match(cand) is None


def _intl(text: str, m: re.Match[str], out: Emit, lead: int = 0) -> None:
    """An international number from its candidate match; `lead`: digits of an
    international prefix ("00") that E.164's 15 do not count."""
    s = m.start()
    cand = m.group()
    prefix = cand[: _intl_end(cand)]
    n = len(text)
    while True:
        digits = sum(c.isdigit() for c in prefix) - lead
        e = s + len(prefix)
        edge_ok = e >= n or not (_is_alnum(text[e]) or text[e] in "/-")
        if digits <= 15 and edge_ok:
            break
        # ran into the next number or a date: back off a group at a time
        cut = max(prefix.rfind(c) for c in " .-")
        if cut <= 1:
            break
        prefix = prefix[:cut].rstrip(" .-(")
    if 8 <= digits <= 15 and edge_ok and prefix.count("(") == prefix.count(")"):
        out.append(Finding("phone", s, e, 0.85))


def _phone_at(text: str, st: int, e0: int, nd: int, out: Emit) -> None:
    """An international (``+``, ``00``) or bracketed trunk number starting at `st`."""
    while text.startswith("((", st):
        st += 1
    if st + 1 >= e0:
        return
    h = st + 1 if text[st] == "(" and text[st + 1] != "0" or text.startswith("(00", st) else st
    if text[h] == "+":  # a bracket may open before it: "(+44 20 ...)"
        m = _PHONE_INTL.match(text, h, e0)
        if m is not None:
            _intl(text, m, out)
    elif text.startswith("00", h) and " " in text[h : h + 6]:
        m = _PHONE_00.match(text, h, e0)  # "0044 20 7946 0958"
        if (
            m is not None
            and (h == 0 or not _is_alnum(text[h - 1]))
            and (m.end("cc") - m.start("cc") == 3 or m.group("cc") in _COUNTRY_CODES)
            and not _PARCEL_444.match(m.group())
            and not _near_before(_IBAN_RUN, text, h, 40)
        ):
            _intl(text, m, out, lead=2)
    elif text[st] == "(" and nd >= 9:
        m = _PHONE_TRUNK_PAREN.match(text, st, e0)  # "(030) 1234 5678"
        if m is not None:
            cand = m.group()
            close = cand.index(")")
            cuts = [k for k, c in enumerate(cand) if c in _SEPS and k > close + 1]
            for cut in reversed([*cuts, len(cand)]):
                if 9 <= _count_digits(cand[:cut]) <= 12 and _digit_bounded(text, st, st + cut):
                    out.append(Finding("phone", st, st + cut, 0.7))
                    break


def _phone(text: str, sc: _Scan, out: Emit) -> None:
    for s0, e0, nd in sc.chunks:
        if nd < 8:
            continue
        # an international or bracketed number starts the run or follows a space in it
        starts = [s0]
        for ch in "+(":
            k = text.find(ch, s0 + 1, e0)
            while k != -1:
                if text[k - 1] == " ":
                    starts.append(k)
                k = text.find(ch, k + 1, e0)
        for st in starts:
            _phone_at(text, st, e0, nd, out)
        if nd >= 10:
            for m in _PHONE_NANP.finditer(text, s0, e0):
                s, e = m.span()
                area = m.group("a1") or m.group("a2")
                if area[0] in "01" or text[e - 8] in "01":  # area and exchange: 2-9
                    continue
                sep = m.group("s")
                if sep is not None and text[e - 5] != sep:
                    continue
                if _digit_bounded(text, s, e) or (s > 0 and text[s - 1] == "+"):
                    out.append(Finding("phone", s, e, 0.8))
        if nd >= 9:
            for m in _PHONE_TRUNK.finditer(text, s0, e0):
                s = m.start()
                if _near_before(_ISBN_CTX, text, s, 12) or _near_before(_IBAN_RUN, text, s, 40):
                    continue
                cand = m.group()
                # the longest prefix of whole groups that is a valid number: the match
                # may have run into the next number ("0171 9725625 64:69:...")
                cuts = [k for k, c in enumerate(cand) if c in _SEPS] + [len(cand)]
                for cut in reversed(cuts[1:]):
                    if _trunk_ok(cand[:cut]) and _digit_bounded(text, s, s + cut):
                        out.append(Finding("phone", s, s + cut, 0.7))
                        break
        if nd >= 10:  # a bare run of 10-12 digits: only right after a phone word
            for m in _PHONE_BARE.finditer(text, s0, e0):
                s, e = m.span()
                if _near_before(_PHONE_LEAD, text, s, 40) and _digit_bounded(text, s, e):
                    out.append(Finding("phone", s, e, 0.6))


# --- payment cards -------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"\d+(?:[ \-]\d+)*")
_RUN_SPLIT = re.compile(r"[ \-]")
# dots between groups of four, the whole run ("4111.1111.1111.1111")
_DOTTED_CARD = re.compile(r"(?<![\w.])\d{4}\.\d{4}\.\d{4}\.\d{4}(?:\.\d{1,3})?(?![\w]|\.\d)")


def _card_grouping(lengths: list[int]) -> bool:
    """Groups of four (the last 1-4), or Amex/Diners 4-6-5 / 4-6-4."""
    if len(lengths) == 1:
        return True
    if lengths[:2] == [4, 6] and len(lengths) == 3:
        return lengths[2] in (4, 5)
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _card_window(groups: list[str], i: int, j: int) -> bool:
    digits = "".join(groups[i : j + 1])
    return (
        13 <= len(digits) <= 19
        and _card_grouping([len(g) for g in groups[i : j + 1]])
        and cs.is_card_number(digits)
    )


def _card_in_run(s: int, run: str, head_glued: bool, tail_glued: bool, out: Emit) -> None:
    """The card numbers in one run of digit groups (`run` at offset `s`).

    The run is cut into chains of groups joined by one separator (a group where the
    separator changes belongs to both: "666-01-3547 4791 7991 0719 6984"). A chain
    of at most 19 digits is one number: a card only as a whole, or without an end
    group that it shares with the next chain, that is glued to a word or a number on
    its left (`head_glued`: "43.763 3863 653957 2138"), or that an expiry's "/"
    follows (`tail_glued`: "4111 1111 1111 1111 12/27"). So "4847-9556-7484-0388-510"
    is one 19-digit number, not a card and three digits. A longer chain cannot be one
    number, so any window of it with a card's grouping may be a card."""
    groups = _RUN_SPLIT.split(run)
    seps = [c for c in run if not c.isdigit()]
    offsets = []
    pos = 0
    for grp in groups:
        offsets.append(pos)
        pos += len(grp) + 1
    last = len(groups) - 1
    chains: list[tuple[int, int]] = []
    a = 0
    for k in range(2, last + 1):
        if seps[k - 1] != seps[k - 2]:
            chains.append((a, k - 1))
            a = k - 1
    chains.append((a, last))

    def emit(i: int, j: int) -> None:
        out.append(Finding("payment_card", s + offsets[i], s + offsets[j] + len(groups[j]), 0.95))

    for a, b in chains:
        lo = a + 1 if a == 0 and head_glued else a
        hi = b - 1 if b == last and tail_glued else b
        if lo > hi:
            continue
        if sum(len(groups[k]) for k in range(a, b + 1)) <= 19:
            starts = [a, a + 1] if a > 0 or head_glued else [a]
            ends = [b, b - 1] if b < last or tail_glued else [b]
            for i, j in sorted(
                ((i, j) for i in starts for j in ends if lo <= i <= j <= hi),
                key=lambda w: w[0] - w[1],
            ):
                if _card_window(groups, i, j):
                    emit(i, j)
                    break
            continue
        # a longer chain: a card starts at its start (or after a shared or glued first
        # group) or after a group that is not four digits long, never inside a
        # grouping of fours ("9400 4568 1226 1038 0857 74" is a parcel number)
        i = lo
        while i <= hi:
            if (
                i in (a, lo)
                or (i == a + 1 and a > 0)
                or len(groups[i - 1]) != 4
                or len(groups[i]) >= 13
            ):
                end = next((j for j in range(hi, i - 1, -1) if _card_window(groups, i, j)), -1)
                if end >= 0:
                    emit(i, end)
                    i = end + 1
                    continue
            i += 1


def _card(text: str, sc: _Scan, out: Emit) -> None:
    n = len(text)
    for s0, e0, nd in sc.chunks:
        if nd >= 13:
            _card_chunk(text, n, s0, e0, out)


def _card_chunk(text: str, n: int, s0: int, e0: int, out: Emit) -> None:
    found: Emit = []
    if text.count(".", s0, e0) >= 3:
        for m in _DOTTED_CARD.finditer(text, s0, e0):
            if cs.is_card_number(m.group().replace(".", "")):
                found.append(Finding("payment_card", m.start(), m.end(), 0.95))
    for m in _DIGIT_RUN.finditer(text, s0, e0):
        s, e = m.span()
        if e - s < 13:
            continue
        # glued: joined to a word, a '#', a decimal or a time ("19:18 4624 ...")
        head_glued = s > 0 and (
            _is_alnum(text[s - 1])
            or text[s - 1] in "+/.-"
            or (text[s - 1] == ":" and s > 1 and text[s - 2].isdigit())
        )
        tail_glued = e < n and (
            _is_alnum(text[e])
            or text[e] == "/"
            or (text[e] in ".,:" and e + 1 < n and text[e + 1].isdigit())
        )
        _card_in_run(s, m.group(), head_glued, tail_glued, found)
    for f in found:
        if _near_before(_NOT_CARD_CTX, text, f.start, 40) and not _near_before(
            _CARD_CTX, text, f.start, 24
        ):
            continue
        grouped = " " in text[f.start : f.end] or "-" in text[f.start : f.end]
        if grouped and _near_before(_IBAN_RUN, text, f.start, 40):
            continue  # groups continuing an IBAN-shaped run ("IE95 SNVP 3022 ...")
        out.append(f)


# --- IBAN ----------------------------------------------------------------------------

# the lookbehind comes after the first letter, so the scan skips to capitals in C
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,4})?")
# lower or mixed case: only in a text that says "IBAN" (a scan over every letter is slow)
_IBAN_ANY_CASE = re.compile(
    r"(?i)[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,4})?"
)


def _iban(text: str, sc: _Scan, out: Emit) -> None:
    if sc.digits < 8:
        return
    pattern = _IBAN_ANY_CASE if "iban" in sc.lower else _IBAN
    pos = 0
    n = len(text)
    while True:
        # a manual scan: a match that ran into the next IBAN resumes where this one ends
        m = pattern.search(text, pos)
        if m is None:
            return
        s = m.start()
        pos = s + 1
        length = cs.IBAN_LENGTHS.get(text[s : s + 2].upper())
        if length is None:
            continue
        # take the country's length in alphanumerics; the match may have run into the
        # next upper-case word
        cand = m.group()
        compact: list[str] = []
        end = s
        for k, ch in enumerate(cand):
            if ch not in " -":
                compact.append(ch.upper())
                if len(compact) == length:
                    end = s + k + 1
                    break
        if len(compact) != length:
            continue
        if end < n and _is_alnum(text[end]):
            continue
        if cs.iban_ok("".join(compact)):
            out.append(Finding("iban", s, end, 0.95))
            pos = end


# --- national identifiers ------------------------------------------------------------

_SSN = re.compile(r"(?<![\w+./\-])(\d{3})([ .\-])(\d{2})\2(\d{4})")
_NINE = re.compile(r"(?<![\w.])(?:\d{9}|\d{4}\.\d{2}\.\d{3})(?![\w.])")
_NHS = re.compile(r"(?<![\w.])\d{3}([ \-]?)\d{3}\1\d{4}")
_NHS_CTX = re.compile(r"(?i)\bnhs(?: (?:number|no\.?))?\b")
_NINO = re.compile(r"([A-Z])(?<!\w[A-Z])([A-Z])( ?)\d{2}\3\d{2}\3\d{2}\3[A-D]")
_DNI = re.compile(r"(?<![\w#/.\-])([XYZ][ \-]?\d{7}|\d{8})[ \-]?([A-Z])(?!\w)")


def _national_id(text: str, sc: _Scan, out: Emit) -> None:
    if sc.digits < 6:
        return
    n = len(text)
    ctx: tuple[bool, bool] | None = None  # (SSN word, BSN word) anywhere, on demand
    for s0, e0, nd in sc.chunks:
        if nd >= 9:
            for m in _SSN.finditer(text, s0, e0):
                s, e = m.span()
                if not cs.ssn_ok(m.group(1), m.group(3), m.group(4)):
                    continue
                if m.group(2) == "." and not _near_before(_SSN_CTX, text, s, 32):
                    continue  # 123.45.6789 only after "SSN"
                if _digit_bounded(text, s, e, glue="+/.-"):  # "SSN#123-45-6789" is fine
                    out.append(Finding("national_id", s, e, 0.85))
        if nd >= 8:
            if ctx is None:
                low = sc.lower
                ctx = (
                    "ssn" in low or "social security" in low,
                    "bsn" in low or "burgerservicenummer" in low or "sofi" in low,
                )
            if ctx[0] or ctx[1]:
                _nine(text, s0, e0, ctx, out)
        if nd >= 7 and (
            # the control letter after the digits, or a NIE's X/Y/Z before them
            (e0 < n and text[e0].isupper())
            or (e0 + 1 < n and text[e0] in " -" and text[e0 + 1].isupper())
            or text[max(0, s0 - 2) : s0].strip(" -")[-1:] in ("X", "Y", "Z")
        ):
            for m in _DNI.finditer(text, max(0, s0 - 2), min(n, e0 + 2)):
                s, e = m.span()
                body = m.group(1).replace(" ", "").replace("-", "")
                if cs.dni_ok(body, m.group(2)) and _word_bounded(text, s, e):
                    out.append(Finding("national_id", s, e, 0.9))
    if "nhs" in sc.lower:
        for s0, e0, nd in sc.chunks:
            if nd < 10:
                continue
            for m in _NHS.finditer(text, s0, e0):
                s, e = m.span()
                if (
                    cs.nhs_ok(m.group().replace(" ", "").replace("-", ""))
                    and _digit_bounded(text, s, e)
                    and _near_before(_NHS_CTX, text, s, 32)
                    and not _near_before(_ISBN_CTX, text, s, 12)
                ):
                    out.append(Finding("national_id", s, e, 0.9))
    for m in _NINO.finditer(text):
        s, e = m.span()
        if cs.nino_prefix_ok(m.group(1) + m.group(2)) and _word_bounded(text, s, e):
            out.append(Finding("national_id", s, e, 0.85))


def _nine(text: str, s0: int, e0: int, ctx: tuple[bool, bool], out: Emit) -> None:
    """Nine bare digits (or a dotted BSN) right after an SSN or BSN word."""
    for m in _NINE.finditer(text, s0, e0):
        s, e = m.span()
        if not _digit_bounded(text, s, e):
            continue
        digits = m.group().replace(".", "")
        if (
            ctx[0]
            and len(m.group()) == 9
            and cs.ssn_ok(digits[:3], digits[3:5], digits[5:])
            and _near_before(_SSN_CTX, text, s, 32)
        ):
            out.append(Finding("national_id", s, e, 0.7))
        elif ctx[1] and cs.bsn_ok(digits) and _near_before(_BSN_CTX, text, s, 32):
            out.append(Finding("national_id", s, e, 0.8))


# --- IP addresses --------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_V6_CHARS = frozenset("0123456789abcdefABCDEF:")
_V6_TAIL = re.compile(r"::[0-9A-Fa-f:.]*")  # the rest of a compressed form (IPv4 tail too)
_IPV6_FULL = re.compile(r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}")


def _ip(text: str, sc: _Scan, out: Emit) -> None:
    n = len(text)
    for s0, e0, nd in sc.chunks:
        if nd < 4 or text.count(".", s0, e0) < 3:
            continue
        for m in _IPV4.finditer(text, s0, e0):
            s, e = m.span()
            if e < n and _is_alnum(text[e]):
                continue
            if _near_before(_NOT_IP_CTX, text, s, 12):
                continue
            out.append(Finding("ip_address", s, e, 0.85))
    p = text.find("::")
    if p != -1 or text.count(":") >= 7:
        spans: set[tuple[int, int]] = set()
        while p != -1:  # expand each "::" over the hex digits and colons around it
            lo = p
            while lo > 0 and text[lo - 1] in _V6_CHARS:
                lo -= 1
            tail = _V6_TAIL.match(text, p)
            hi = tail.end() if tail is not None else p + 2
            spans.add((lo, hi))
            p = text.find("::", hi)
        if text.count(":") >= 7:
            lo = _colon_cluster(text)  # seven colons at most five apart: a full form
            if lo >= 0:
                spans.update(f.span() for f in _IPV6_FULL.finditer(text, lo))
        for s, e in sorted(spans):
            _ipv6(text, s, e, out)


def _colon_cluster(text: str) -> int:
    """Where the first run of seven colons, each within five characters of the last,
    starts (-1: none), so the full-form IPv6 pattern scans only from there."""
    start = prev = text.find(":")
    count = 1
    while prev != -1:
        k = text.find(":", prev + 1)
        if k == -1:
            return -1
        if k - prev <= 5:
            count += 1
            if count >= 7:
                return max(0, start - 4)
        else:
            start, count = k, 1
        prev = k
    return -1


def _ipv6(text: str, s: int, e: int, out: Emit) -> None:
    while e > s and text[e - 1] in ".:" and not text.endswith("::", s, e):
        e -= 1  # a sentence's full stop, a trailing colon
    if (s > 0 and (_is_alnum(text[s - 1]) or text[s - 1] in ".:")) or (
        e < len(text) and (_is_alnum(text[e]) or text[e] == ":")
    ):
        return
    cand = text[s:e]
    groups = [g for g in cand.split(":") if g]
    if len(groups) < 2 or not any(c.isdigit() for c in cand):
        return  # "::1", "a::b", "std::vector"
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return
    out.append(Finding("ip_address", s, e, 0.85))


# --- API keys ------------------------------------------------------------------------

_API_KEY = re.compile(
    r"(?P<sk>sk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-|admin\d\d-)?)?)(?P<body>[A-Za-z0-9_\-]{20,})"
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"
    r"|glpat-[0-9A-Za-z_\-]{20,}"
    r"|hf_(?P<hf>[A-Za-z0-9]{30,})"
    r"|SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{30,50}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|pypi-AgE[A-Za-z0-9_\-]{50,}"
    r"|SK[0-9a-f]{32}"
)


def _mixed(body: str) -> bool:
    lower = upper = digit = False
    for c in body:
        if c.islower():
            lower = True
        elif c.isupper():
            upper = True
        elif c.isdigit():
            digit = True
    return lower and upper and digit


_API_PREFIXES = (
    "sk-", "sk_", "rk_", "gh", "github_pat_", "xox", "AKIA", "ASIA", "AIza", "glpat-",
    "hf_", "SG.", "npm_", "pypi-", "SK",
)  # fmt: skip


def _api_key(text: str, _sc: _Scan, out: Emit) -> None:
    if not any(p in text for p in _API_PREFIXES):
        return
    for m in _API_KEY.finditer(text):
        s, e = m.span()
        if s > 0 and (_is_alnum(text[s - 1]) or text[s - 1] == "-"):
            continue
        if e < len(text) and _is_alnum(text[e]):
            continue
        body = m.group("body")
        if body is not None and not _mixed(body):
            continue
        hf = m.group("hf")
        if hf is not None and (hf == hf.lower() or hf == hf.upper()):
            continue  # "hf_" + a snake_case name is not a token
        out.append(Finding("api_key", s, e, 0.95))


# --- secrets -------------------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*")
# the words after which a token may be a secret (see _keywords for the boundaries)
_SECRET_WORDS = (
    "key", "token", "secret", "password", "passwd", "pwd", "passcode", "passphrase",
    "credential", "bearer", "auth",
)  # fmt: skip
_PASSWORD_WORDS = frozenset({"password", "passwd", "pwd", "passcode", "passphrase"})
_TOKEN = re.compile(r"[A-Za-z0-9+/_\-]{24,}={0,2}")
_PATH = re.compile(r"/[a-z]{2,}/")  # "/items/683f...": a URL path, not base64
_CHUNK = re.compile(r"[^\s\"'`()\[\]{}<>,;]+")
# after a password word: an assignment or "is"/"was", then the value
_PASSWORD_VALUE = re.compile(
    r"(?:\s*(?P<op>[:=])\s*|\s+(?i:is|was)\s*:?\s*)"
    r"(?:(?P<q>[\"'`])(?P<qv>[^\"'`\n]{6,64})(?P=q)|(?P<v>[^\s\"'`]{6,64}))"
)
_PLACEHOLDER_WORDS = ("your", "password", "example", "placeholder", "changeme", "xxx", "***")
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.\-]{1,15}://[^\s:/@]{1,64}:([^\s@/]{3,128})@")
_PLACEHOLDER_START = frozenset("$<{%*[(")
_HEX = frozenset("0123456789abcdefABCDEF")
SECRET_WINDOW = 40  # characters after a secret word (same line) within which a token counts
# "key = ", "token: '", "SECRET_KEY=\"": then only the value assigned counts
_ASSIGN = re.compile(r"[\w\-]{0,24}[\"']?\s*[:=]\s*[\"'`]?")
ENTROPY_HEX = 3.0  # bits/char, all-hex tokens (random hex of 24 chars: p01 3.05)
ENTROPY_OTHER = 3.6  # bits/char, other tokens (random base62 of 24 chars: p01 3.9)
CLASS_CHANGES = 0.3  # share of adjacent pairs changing lower/upper/digit (random: p01 0.35)


def shannon_entropy(s: str) -> float:
    """Bits per character of the string's own character distribution."""
    n = len(s)
    counts: dict[str, int] = {}
    for c in s:
        counts[c] = counts.get(c, 0) + 1
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def _class_changes(s: str) -> float:
    """Share of adjacent alphanumeric pairs whose class (lower, upper, digit) differs;
    symbols break a pair. Random tokens change class often, words rarely."""
    changes = pairs = 0
    prev = -1
    for c in s:
        k = 0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else -1
        if k < 0:
            prev = -1
            continue
        if prev >= 0:
            pairs += 1
            changes += k != prev
        prev = k
    return changes / pairs if pairs else 0.0


def _upper_pairs(s: str) -> int:
    return sum(1 for a, b in zip(s, s[1:], strict=False) if a.isupper() and b.isupper())


def looks_random(token: str) -> bool:
    """The generic-secret test on one token (see the module docstring)."""
    has_digit = has_alpha = False
    for c in token:
        if c.isdigit():
            has_digit = True
        elif c.isalpha():
            has_alpha = True
    if not has_alpha:
        return False
    core = token.rstrip("=")
    if not has_digit:
        # letters only (2% of random base64 tokens of 24 characters): camelCase
        # identifiers rarely put two capitals together, random text often does
        base64ish = "+" in core or "/" in core
        return (
            core != core.lower()
            and core != core.upper()
            and _upper_pairs(core) >= (1 if base64ish else 2)
            and shannon_entropy(core) >= ENTROPY_OTHER
            and _class_changes(core) >= CLASS_CHANGES
        )
    if all(c in _HEX or c == "-" for c in core):
        return shannon_entropy(core.replace("-", "")) >= ENTROPY_HEX
    return shannon_entropy(core) >= ENTROPY_OTHER and _class_changes(core) >= CLASS_CHANGES


def _placeholder(v: str) -> bool:
    low = v.lower()
    return (
        v[0] in _PLACEHOLDER_START
        or set(v) <= {"*", "x", "X", "."}
        or any(w in low for w in _PLACEHOLDER_WORDS)
    )


def _password_value_ok(v: str, assigned: bool) -> bool:
    """A stated password, not a placeholder ("********", "${DB_PASSWORD}", a call) or a
    word: letters with a digit or a symbol inside; or, when assigned (``pwd=...``,
    ``password: ...``), with a trailing symbol ("letmein!"); or, in prose ("my
    password is ..."), mixed case with a trailing symbol ("Sunshine!", not "wrong!")."""
    if _placeholder(v) or "(" in v or "[" in v:
        return False
    if not any(c.isalpha() for c in v):
        return False
    if any(c.isdigit() for c in v):
        return True
    core = v.rstrip("!?.")
    if any(not c.isalnum() for c in core):
        return True
    if core == v:
        return False
    return assigned or (any(c.isupper() for c in v) and any(c.islower() for c in v))


def _keywords(text: str, lower: str) -> list[tuple[int, int, str]]:
    """The secret words in `text` as (start, end, word), sorted: a word not preceded
    by a letter (so "monkey" does not count), or a camelCase part ("apiKey",
    "authToken"); an "s" may follow; no letter after it ("tokenizer", "keyId")."""
    found: list[tuple[int, int, str]] = []
    n = len(text)
    for word in _SECRET_WORDS:
        p = lower.find(word)
        while p != -1:
            e = p + len(word)
            if e < n and lower[e] == "s":
                e += 1
            ok_left = p == 0 or not text[p - 1].isalpha()
            if not ok_left and text[p].isupper() and text[p - 1].islower():
                ok_left = True  # camelCase
            if not ok_left and word == "key" and lower.endswith("api", 0, p):
                ok_left = p == 3 or not text[p - 4].isalpha()  # apikey
            # the word ends its identifier: "keyboard", "keyId", "tokenIfExpired" do not count
            if ok_left and not (e < n and text[e].isalpha()):
                found.append((p, e, word))
            p = lower.find(word, p + 1)
    found.sort()
    return found


def _secret(text: str, sc: _Scan, out: Emit) -> None:
    if "-----BEGIN" in text:
        for m in _PEM_BEGIN.finditer(text):
            end_m = _PEM_END.search(text, m.end())
            out.append(Finding("secret", m.start(), end_m.end() if end_m else m.end(), 0.99))
    if "eyJ" in text:
        for m in _JWT.finditer(text):
            if _word_bounded(text, m.start(), m.end()):
                out.append(Finding("secret", m.start(), m.end(), 0.9))
    if "://" in text:
        for m in _URL_CREDENTIALS.finditer(text):
            if not _placeholder(m.group(1)):
                out.append(Finding("secret", m.start(1), m.end(1), 0.97))
    n = len(text)
    for ks, ke, word in _keywords(text, sc.lower):
        if word in _PASSWORD_WORDS:
            pm = _PASSWORD_VALUE.match(text, ke)
            if pm is not None:
                if pm.group("qv") is not None:  # quoted: a passphrase may have spaces
                    v, vs = pm.group("qv"), pm.start("qv")
                    ok = not _placeholder(v) and any(c.isalpha() for c in v)
                else:
                    v, vs = pm.group("v").rstrip(".,;:)]}>"), pm.start("v")
                    ok = bool(v) and _password_value_ok(v, pm.group("op") is not None)
                if ok:
                    out.append(Finding("secret", vs, vs + len(v), 0.6))
        a = _ASSIGN.match(text, ke)
        if a is not None:
            t = _TOKEN.match(text, a.end())
            if t is not None and looks_random(t.group()):
                out.append(Finding("secret", t.start(), t.end(), 0.75))
            continue
        if ke < n and (text[ke] in "'\"`])}" or text.startswith("-----", ke)):
            continue  # the end of a quoted name or path ('OPENAI_API_KEY'], PEM armour)
        if ks > 0 and text[ks - 1] == "/":
            continue  # a path: prod/db/credentials
        if (ks > 0 and (_is_alnum(text[ks - 1]) or text[ks - 1] == ".")) or (
            ke < n and _is_alnum(text[ke])
        ):
            continue  # part of a name not assigned here (process.env.STRIPE_SECRET_KEY)
        hi = min(n, ke + SECRET_WINDOW)
        nl = text.find("\n", ke, hi)
        if nl != -1:
            hi = nl
        for chunk in _CHUNK.finditer(text, ke, hi):
            c = chunk.group()
            t = _TOKEN.search(c)
            if t is not None and 0 <= max(c.find("="), c.find(":")) < t.start():
                break  # another name's value ("id=...", "sha256:..."): stop
            if t is not None and not _PATH.match(t.group()) and looks_random(t.group()):
                s = chunk.start() + t.start()
                full = _TOKEN.match(text, s)  # the window may have cut the token short
                out.append(Finding("secret", s, full.end() if full else s + len(t.group()), 0.75))
                break
            if len(c) >= 6 and any(ch.isdigit() for ch in c):
                break  # a value that is not a secret ("Passw0rd&3", "1696c3ce60"): stop


RECOGNISERS: dict[str, Recogniser] = {
    "email": _email,
    "phone": _phone,
    "payment_card": _card,
    "iban": _iban,
    "national_id": _national_id,
    "ip_address": _ip,
    "api_key": _api_key,
    "secret": _secret,
}


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep, among overlapping findings, the highest score (then the longest span);
    the result is sorted by start offset. O(n log n): kept spans are disjoint, so a
    candidate need only be checked against its neighbours by start."""
    if len(findings) < 2:
        return findings
    ranked = sorted(findings, key=lambda f: (-f.score, f.start - f.end, f.start))
    starts: list[int] = []
    kept: list[Finding] = []
    for f in ranked:
        i = bisect.bisect_left(starts, f.start)
        if i > 0 and kept[i - 1].end > f.start:
            continue
        if i < len(kept) and kept[i].start < f.end:
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept


class PatternDetector:
    """Regex, checksum and context recognisers for the entity types in `entities`
    (None: all of ENTITIES). Stateless after construction and thread-safe."""

    def __init__(self, entities: Iterable[str] | None = None) -> None:
        wanted = ENTITIES if entities is None else tuple(dict.fromkeys(entities))
        unknown = [e for e in wanted if e not in RECOGNISERS]
        if unknown:
            raise ValueError(f"unknown entity type(s) {unknown}; known: {', '.join(ENTITIES)}")
        self.entities: tuple[str, ...] = wanted
        self._recognisers = [RECOGNISERS[e] for e in wanted]

    def detect(self, text: str) -> list[Finding]:
        """Every sensitive span in `text`, sorted by start, overlaps resolved."""
        if not text:
            return []
        sc = _Scan(text)
        out: list[Finding] = []
        for rec in self._recognisers:
            rec(text, sc, out)
        return resolve_overlaps(out)

    def entities_in(self, text: str) -> set[str]:
        """The entity types found in `text` (what the routing rules need)."""
        return {f.entity for f in self.detect(text)}

    def __repr__(self) -> str:
        return f"PatternDetector(entities={list(self.entities)!r})"
