"""`python -m codetune ...`: the CLI, also as `torchrun -m codetune train CONFIG` or `accelerate launch -m codetune train CONFIG`."""

from codetune.cli import main

main()
