"""The main branch as version control: a results folder is the repository, its versions the history.

- recipe.py    how a version was made, one coefficient per hospital; rebuilding it from stored adapters
- factored.py  withdraw / replace one contribution on a linear version's own factors (exact)
- versions.py  find versions and hospitals, read tensors, evaluate and add new versions
- history.py   log, show;  withdraw.py, recommit.py, credit.py, diff.py, release.py: one command each
- cli.py       the `medforge` command (scripts/forge.py)
"""
