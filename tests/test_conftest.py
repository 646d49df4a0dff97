"""The suite's own machinery in conftest.py: the backend parametrization and how absent backends are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.parametrize("workers", [0, 2], ids=["one_process", "xdist"])
def test_an_absent_backend_is_one_line_of_the_skip_summary(pytester, workers):
    """Also with pytest-xdist (the README's test command runs the suite on every core), whose workers send
    their reports back to the process that prints the summary."""
    # The inner runs are subprocesses: run in this process, pytester would drop the extension modules they
    # imported (SciPy's, torch's) from sys.modules, and importing them again later loads their C libraries
    # twice (a segfault, seen when this file ran on its own).
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_sample="""
        import pytest

        def test_one(backend):
            pass

        def test_two(backend):
            pass

        def test_skipped_for_another_reason():
            pytest.skip("not today")
        """)
    options = ["-rs", "--backend", "numpy", "--backend", "array_api_strict:nowhere"]
    result = pytester.runpytest_subprocess(*options, *(["-n", str(workers)] if workers else []))
    result.assert_outcomes(passed=2, skipped=3)  # the tests of the absent backend still count as skipped
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert skipped == ["SKIPPED [2] conftest.py: absent backend array_api_strict:nowhere: array_api_strict has no "
                       "device 'nowhere' (try 'device1')",
                       "SKIPPED [1] test_sample.py:10: not today"]


def test_contract_tests_run_on_every_listed_device(pytester):
    import backends

    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    every_device: every device of every backend\n")
    pytester.makepyfile(test_sample="""
        import pytest

        def test_network_code(backend):
            pass

        @pytest.mark.every_device
        def test_contract(backend):
            pass
        """)
    listed = [row.name for row in backends.backend_statuses()]
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    ids = [line.split("::", 1)[1] for line in result.outlines if "::" in line]
    assert {"array_api_strict", "array_api_strict:device1", "numpy", "torch:cpu"} <= set(listed)
    assert sorted(i for i in ids if i.startswith("test_contract")) == sorted(f"test_contract[{s}]" for s in listed)
    network = [i for i in ids if i.startswith("test_network_code")]
    assert "test_network_code[array_api_strict:device1]" in network
    assert "test_network_code[array_api_strict]" in network  # both devices of array_api_strict
