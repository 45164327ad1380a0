"""`python -m rewrite.cli ...` (tests and Slurm batch scripts run the command this way)."""
from . import main

if __name__ == "__main__":
    main()
