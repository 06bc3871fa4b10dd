"""`python -m tinygpt` is the `tinygpt` command."""
from .cli import main

raise SystemExit(main())
