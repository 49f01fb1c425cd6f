"""`python -m mtkd` runs the command-line tool (used by torchrun)."""

from mtkd.cli.main import main

if __name__ == "__main__":
    main()
