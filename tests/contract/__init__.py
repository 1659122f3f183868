"""Contract suites: one suite per Protocol, run against every backend."""
