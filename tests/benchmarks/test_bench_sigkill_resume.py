"""The SIGKILL-and-resume benchmark in small (benchmarks/bench_sigkill_resume.py runs 20 trials): a kill
at a random step resumes bit-exact, or the resume refuses clearly (issue 15)."""

from __future__ import annotations

from conftest import load_benchmark


def test_a_random_sigkill_resumes_bit_exact_or_is_refused_clearly(capsys):
    bench = load_benchmark("bench_sigkill_resume")
    counts = bench.main(["--trials", "1", "--seed", "1"])
    assert counts["BAD"] == 0 and counts["exact"] + counts["refused"] == 1, capsys.readouterr().out
