"""Entry point for ``python -m training``."""
from training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
