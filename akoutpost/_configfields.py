# -*- test-case-name: tests.test_config,tests.test_tls -*-
"""
Reading the fields of one table of the configuration file (L{_Table}), and
checking those that name URLs, files, secrets, certificates and path
patterns.  Every problem is recorded, worded for the user, and reading goes
on so that one pass finds them all.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from akoutpost._settings import _DEFAULT_PORTS


class _Table:
    """
    One TOML table being read.  A field of the wrong type is recorded as a
    problem (worded with C{where}) and read as its default, so that reading
    goes on and every other problem is found too; any problem at all means
    the result is thrown away.
    """

    def __init__(self, raw: Mapping[str, object], where: str, problems: list[str]) -> None:
        self.raw = raw
        self.where = where
        self.problems = problems

    def problem(self, key: str, message: str) -> None:
        prefix = f"{self.where}, " if self.where else ""
        self.problems.append(f"{prefix}field {key!r}: {message}")

    def unknownFields(self, known: Sequence[str]) -> None:
        for key in self.raw:
            if key not in known:
                self.problem(key, "unknown field" + _didYouMean(key, known))

    def _get(self, key: str, kinds: tuple[type, ...], kindName: str, required: bool) -> object:
        if key not in self.raw:
            if required:
                self.problem(key, "required")
            return None
        value = self.raw[key]
        # TOML booleans are Python ints: only accept them where asked for.
        if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
            return value
        self.problem(key, f"must be {kindName}, not {_typeName(value)}")
        return None

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        value = self._get(key, (str,), "a string", required)
        return value if isinstance(value, str) else default

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false", False)
        return value if isinstance(value, bool) else default

    def number(self, key: str, default: float) -> float:
        value = self._get(key, (int, float), "a number", False)
        return float(value) if isinstance(value, (int, float)) else default

    def integer(self, key: str, default: int) -> int:
        value = self._get(key, (int,), "a whole number", False)
        return value if isinstance(value, int) else default

    def seconds(self, key: str, default: float) -> float:
        """
        A duration: a positive, finite number of seconds.
        """
        value = self.number(key, default)
        if not (math.isfinite(value) and value > 0):
            self.problem(key, "must be a positive number of seconds")
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, (list,), "an array of strings", False)
        if not isinstance(value, list):
            return default
        for position, item in enumerate(value, start=1):
            if not isinstance(item, str):
                self.problem(key, f"must be an array of strings, but item {position} is {_typeName(item)}")
                return default
        return tuple(value)


def _typeName(value: object) -> str:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return "an array of tables"
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (Mapping, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _didYouMean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hasBadCharacters(text: str) -> bool:
    return any(c <= " " or c == "\x7f" or c == "\\" for c in text)


def _checkURL(value: str) -> SplitResult:
    """
    Split an absolute http(s) URL naming a host, and nothing a provider URL
    must not carry (credentials, query, fragment).

    @raise ValueError: with the problem, worded for the user.
    """
    if _hasBadCharacters(value):
        raise ValueError(f"{value!r} contains whitespace, control characters or backslashes")
    try:
        split = urlsplit(value)
        _ = split.port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a valid URL: {e}") from None
    if split.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{value!r} is not an http or https URL")
    if "@" in split.netloc:
        raise ValueError(f"{value!r} must not contain a user name or password")
    if "?" in value or "#" in value:
        raise ValueError(f"{value!r} must not have a query or fragment")
    if not (split.hostname or "").rstrip("."):
        raise ValueError(f"{value!r} has no host")
    return split


def _readablePath(reader: _Table, key: str, baseDir: str) -> str:
    """
    An optional file name field, made absolute and checked to be readable;
    "" when absent or unreadable (then a problem is recorded).
    """
    value = reader.string(key)
    if not value:
        return ""
    path = os.path.abspath(os.path.join(baseDir, value))
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        reader.problem(key, f"cannot read {path}: {e.strerror or e}")
        return ""
    return path


def _certificate(reader: _Table, baseDir: str) -> tuple[str, str]:
    """
    The C{certificate} and C{certificate_key} fields: readable PEM files
    holding a certificate and the key that matches it.
    """
    before = len(reader.problems)
    certificate = _readablePath(reader, "certificate", baseDir)
    key = _readablePath(reader, "certificate_key", baseDir)
    if key and not certificate and len(reader.problems) == before:
        reader.problem("certificate_key", "given without 'certificate'")
    if certificate and len(reader.problems) == before:
        from akoutpost.tls import CertificateError, loadCertifiedKey

        try:
            loadCertifiedKey(certificate, key)
        except CertificateError as e:
            reader.problem(e.field if key else "certificate", str(e))
    return certificate, key


def _nonEmpty(reader: _Table, key: str) -> str:
    value = reader.string(key, required=True)
    if key in reader.raw and reader.raw[key] == "":
        reader.problem(key, "must not be empty")
    return value


def _url(reader: _Table, key: str, ifMissing: str) -> tuple[str, SplitResult | None]:
    """
    Read an http(s) URL field.

    @param ifMissing: the problem to report if it is absent or empty, or
        C{""} if it is optional.
    """
    value = reader.string(key)
    if not value:
        if ifMissing and not (key in reader.raw and not isinstance(reader.raw[key], str)):
            reader.problem(key, ifMissing)
        return "", None
    try:
        return value, _checkURL(value)
    except ValueError as e:
        reader.problem(key, str(e))
        return "", None


def _secret(reader: _Table, key: str, baseDir: str, required: bool) -> str:
    """
    Read a secret given inline as C{key} or in the file named by C{key_file}
    (trailing newlines dropped), so that secrets can stay out of the
    configuration file.
    """
    fileKey = key + "_file"
    inline = reader.string(key)
    path = reader.string(fileKey)
    if key in reader.raw and fileKey in reader.raw:
        reader.problem(key, f"set either {key!r} or {fileKey!r}, not both")
        return ""
    if fileKey not in reader.raw:
        if required and key not in reader.raw:
            reader.problem(key, f"required (or {fileKey!r})")
        elif required and reader.raw.get(key) == "":
            reader.problem(key, "must not be empty")
        return inline
    if not path:
        if reader.raw[fileKey] == "":
            reader.problem(fileKey, "must not be empty")
        return ""
    fullPath = os.path.abspath(os.path.join(baseDir, path))
    try:
        with open(fullPath, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as e:
        reader.problem(fileKey, f"cannot read {fullPath!r}: {e.strerror or e}")
        return ""
    except UnicodeDecodeError:
        reader.problem(fileKey, f"{fullPath!r} is not UTF-8 text")
        return ""
    if required and not secret:
        reader.problem(fileKey, f"{fullPath!r} is empty")
    return secret


def _patterns(reader: _Table) -> tuple[re.Pattern[str], ...]:
    """
    Compile C{skip_path_regex}, one pattern a line.  Blank lines are skipped
    (in authentik they match every path), and surrounding whitespace, such as
    the C{\\r} of CRLF files, is dropped.
    """
    patterns: list[re.Pattern[str]] = []
    for number, line in enumerate(reader.string("skip_path_regex").split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            patterns.append(re.compile(line))
        except re.error as e:
            reader.problem("skip_path_regex", f"line {number}, {line!r}: {e}")
    return tuple(patterns)
