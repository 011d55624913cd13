"""Prints one line, 'tests: N passed, N failed, N skipped', from the test logs of the last `bazel test`.

Counts individual test cases (pytest and GoogleTest), not Bazel targets.
"""
import glob
import os
import re
import sys


def main(root):
    passed = failed = skipped = 0
    for log in glob.glob(os.path.join(root, "bazel-testlogs", "**", "test.log"), recursive=True):
        text = open(log, errors="replace").read()
        pytest_line = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", text, re.M)
        if pytest_line:
            counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (\w+)", pytest_line[-1]))
            passed += counts.get("passed", 0)
            failed += counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
            skipped += counts.get("skipped", 0)
            continue
        gtest_pass = re.findall(r"^\[  PASSED  \] (\d+) test", text, re.M)
        gtest_fail = re.findall(r"^\[  FAILED  \] (\d+) test", text, re.M)
        passed += int(gtest_pass[-1]) if gtest_pass else 0
        failed += int(gtest_fail[-1]) if gtest_fail else 0
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
