"""`python -m simulators.quality`: see simulators/quality/run.py for the flags."""

from simulators.quality.run import main

raise SystemExit(main())
