module udskit.benchmarks/echo

go 1.19
