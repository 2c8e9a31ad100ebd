"""``python -m hub`` runs the console script."""

from hub.cli import main

main()
