"""`python -m tinyllm`: the tinyllm command without its console script (e.g. a source tree)."""

from tinyllm.cli import main

if __name__ == "__main__":
    main()
