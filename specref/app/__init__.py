"""The application around the method: the command line (cli.py), output folders and the rule that protects the
user's files (outputs.py, folders.py), sweeps and batches (sweep.py, batch.py), pictures of an edit (pictures.py),
background metrics (metrics.py) and the demo (demo.py). The method itself is the package above; it never imports
from here."""
