"""``python -m arl2rt ...`` runs the CLI, for machines where the ``arl2rt`` script is not on PATH."""

from arl2rt.cli.main import main

main()
