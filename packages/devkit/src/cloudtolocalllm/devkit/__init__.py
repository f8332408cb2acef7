"""The repository's own tooling, shared by the dev stack, nox, the tests and the benchmarks (never shipped)."""
