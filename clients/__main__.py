"""``python -m clients`` runs the interactive CLI (the same as ``crossdock cli``)."""

from clients.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
