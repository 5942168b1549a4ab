#!/usr/bin/env python
"""A run folder as a repository: log, show, withdraw, recommit, credit, diff, release (fl_app/forge/cli.py).

python scripts/forge.py log RUN_DIR
python scripts/forge.py withdraw RUN_DIR --hospital 2 --verify
python scripts/forge.py release RUN_DIR merged --to release/
"""

from fl_app.forge.cli import main

if __name__ == "__main__":
    main()
