#!/usr/bin/env python3
"""Runs every Python test of the suite (tests/**/test_*.py, unittest style):
golden parity, integration tests against the real dcnserve binary, the
PyTorch toolchain. Prints one closing line 'N passed, N failed, N skipped'
and exits non-zero on any failure or error.

Environment: DCNSERVE (server binary), DCN_INSPECT (dcn-inspect binary).
Arguments: optional name filters (substring of the test id)."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main():
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for dirpath, dirnames, filenames in sorted(os.walk(HERE)):
        dirnames.sort()
        if "__pycache__" in dirpath or "golden" in dirpath:
            continue
        for fn in sorted(filenames):
            if fn.startswith("test_") and fn.endswith(".py"):
                sys.path.insert(0, dirpath)
                mod = os.path.splitext(fn)[0]
                suite.addTests(loader.loadTestsFromName(mod))
                sys.path.pop(0)
    filters = sys.argv[1:]
    tests = [t for t in iter_tests(suite) if not filters or any(f in t.id() for f in filters)]
    result = unittest.TextTestRunner(verbosity=2).run(unittest.TestSuite(tests))
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if result.testsRun == 0:
        print("no Python test ran", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
