"""`lab-dashboard`: start the Streamlit dashboard on a tracking store.

    lab-dashboard [--tracking-uri URI] [--port P] [--address A]

Binds to 127.0.0.1 unless --address says otherwise (design §8: nothing listens beyond this machine by
default), runs headless (no browser is opened; the URL is printed) and sends no usage statistics.
The store URI reaches the app through $LAB_TRACKING_URI (app/data.py reads it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app import URI_ENV, default_uri

HOME = Path(__file__).resolve().parent / "Home.py"


def streamlit_command(port: int, address: str) -> list[str]:
    """The command line of the dashboard's server: `streamlit run` through app.serve, which warms the store cache."""
    return [sys.executable, "-m", "app.serve", str(HOME),
            "--server.address", address, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lab-dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default=default_uri(),
                        help=f"MLflow store to open (default: ${URI_ENV} or sqlite:///mlflow.db)")
    parser.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the dashboard to the network)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Replace this process by the server (so signals reach the server itself, and no child is orphaned)."""
    args = parse(argv)
    env = {**os.environ, URI_ENV: args.tracking_uri}
    print(f"lab-dashboard: {args.tracking_uri} at http://{args.address}:{args.port}", flush=True)
    command = streamlit_command(args.port, args.address)
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
