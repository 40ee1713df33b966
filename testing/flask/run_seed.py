"""Runs the seed's Flask app (app.py, copied verbatim from the seed) on 127.0.0.1:<port>.

Usage: python run_seed.py PORT

No debug mode and no reloader: the tests start and kill exactly one process.
"""

import sys

from app import app

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
