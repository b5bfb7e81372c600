"""``python -m tinyserve_sim`` runs the command line."""

from tinyserve_sim.cli import main

main()
