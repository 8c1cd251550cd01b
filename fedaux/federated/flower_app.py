"""The Flower app for a real deployment: ``flwr run`` loads these two objects by import path.

``server_app`` runs on the SuperLink's host. Its run config names the experiment YAML
(``experiment``, an absolute path on that host) and optional ``overrides`` (``key=value`` words);
it writes the usual run folder there. ``client_app`` runs on every SuperNode, which states its
base station index and its local flows in ``--node-config "base-station=0 data-root=/data/bs0"``.
See README "Deployment" and ``conf/deploy/``.
"""

from __future__ import annotations

import shlex

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedaux.federated.engines.flower import FlowerEngine, client_app

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedaux.config import load_config
    from fedaux.train import run

    cfg = load_config(str(context.run_config["experiment"]), shlex.split(str(context.run_config.get("overrides", ""))))
    result = run(cfg, engine=FlowerEngine(cfg, grid=grid))
    print(f"fedaux: run folder {result.run_dir}, final accuracy {result.summary['final_accuracy']:.4f}")


__all__ = ["client_app", "server_app"]
