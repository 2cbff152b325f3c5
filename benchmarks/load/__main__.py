"""`python -m benchmarks.load` (from the repository's root): benchmarks/load/run.py."""

from benchmarks.load.run import main

raise SystemExit(main())
