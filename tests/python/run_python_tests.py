#!/usr/bin/python3
"""Runs every tests/python/test_*.py with unittest, one line per test, and ends
with the line `N passed, M failed` (skipped tests are listed, not counted).
Exits 1 when any test fails or errors.

    /usr/bin/python3 tests/python/run_python_tests.py [-k SUBSTRING] [FILE...]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time
import traceback
import unittest
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


class LineResult(unittest.TestResult):
    """Prints PASS/FAIL/ERROR/SKIP and the time of each test as it ends."""

    def __init__(self) -> None:
        super().__init__()
        self.passed = 0
        self.reports: List[str] = []
        self._start = 0.0

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._start = time.monotonic()

    def _line(self, word: str, test: unittest.TestCase, extra: str = "") -> None:
        took = time.monotonic() - self._start
        print(f"{word:5} {test.id()} ({took:.2f}s){extra}", flush=True)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.passed += 1
        self._line("PASS", test)

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        self._line("FAIL", test)
        self.reports.append(f"FAIL {test.id()}\n{self._exc_info_to_string(err, test)}")

    def addError(self, test, err) -> None:
        super().addError(test, err)
        self._line("ERROR", test)
        self.reports.append(f"ERROR {test.id()}\n{self._exc_info_to_string(err, test)}")

    def addSkip(self, test, reason) -> None:
        super().addSkip(test, reason)
        self._line("SKIP", test, f": {reason}")

    def addExpectedFailure(self, test, err) -> None:
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line("PASS", test, " (expected failure)")

    def addUnexpectedSuccess(self, test) -> None:
        super().addUnexpectedSuccess(test)
        self._line("FAIL", test, " (unexpected success)")
        self.reports.append(f"FAIL {test.id()}: unexpected success")

    def addSubTest(self, test, subtest, err) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.reports.append(f"FAIL {subtest.id()}\n{self._exc_info_to_string(err, test)}")


def _load(path: str, loader: unittest.TestLoader) -> unittest.TestSuite:
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return loader.loadTestsFromModule(module)


def _flatten(suite: unittest.TestSuite) -> List[unittest.TestCase]:
    out = []
    for t in suite:
        out.extend(_flatten(t) if isinstance(t, unittest.TestSuite) else [t])
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Run the Python tests in tests/python.")
    p.add_argument("files", nargs="*",
                   help="test files to run (default: every tests/python/test_*.py)")
    p.add_argument("-k", metavar="SUBSTRING",
                   help="run only tests whose id contains SUBSTRING")
    a = p.parse_args(argv)
    files = a.files or sorted(glob.glob(os.path.join(HERE, "test_*.py")))
    loader = unittest.TestLoader()
    result = LineResult()
    load_failures = 0
    selected = unittest.TestSuite()
    for path in files:
        try:
            tests = _flatten(_load(path, loader))
        except Exception:  # a file that does not import fails as a whole
            load_failures += 1
            print(f"ERROR {os.path.basename(path)} (import)", flush=True)
            result.reports.append(f"ERROR importing {path}\n{traceback.format_exc()}")
            continue
        selected.addTests(t for t in tests if not a.k or a.k in t.id())
    # One suite, so that setUpClass/tearDownClass run around each class.
    selected.run(result)
    for report in result.reports:
        print("\n" + report.rstrip(), file=sys.stderr)
    failed = len(result.failures) + len(result.errors) + \
        len(result.unexpectedSuccesses) + load_failures
    print(f"{result.passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
