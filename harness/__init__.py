"""What the tests and the benchmarks share: a private stack on free ports, batch helpers,
fleet boxes and the workflow activity doubles. Development only; never on a box."""
