"""`python -m spotrun`: the same as the `spotrun` command."""

from spotrun._cli import main

raise SystemExit(main())
