"""Entry point of the py_test targets: runs pytest on the files given as arguments (see tests/BUILD)."""
import sys

import pytest

if __name__ == "__main__":
    # -p no:cacheprovider: Bazel's runfiles tree is read-only.
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic"] + sys.argv[1:]))
