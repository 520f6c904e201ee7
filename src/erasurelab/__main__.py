"""`python -m erasurelab` (and `accelerate launch -m erasurelab`) runs the CLI."""

from erasurelab.cli import main

main()
