"""``python -m dawnchorus`` runs the command line."""

from dawnchorus.cli.app import main

main()
