"""`hearthbot run` pointed at a fake Discord: patch discord.py's URLs, then run the real CLI.

    python tests/trials/discord_runner.py http://127.0.0.1:PORT --config FILE run

discord.py has no setting for its REST base or gateway, so a service in a subprocess can only
reach the fake through these two class attributes (see tests/fakes/discord.py,
`patch_client_urls`). Everything after the URL is the command line of `hearthbot`.

Run by path, not with -m: the service's own code may come from another checkout on PYTHONPATH.
"""

from __future__ import annotations

import sys

import bot  # noqa: F401  (sets the process environment before any platform library loads)


def main(argv: list[str]) -> int:
    import discord.gateway
    import discord.http
    import yarl

    from bot.cli import main as hearthbot

    base = argv[0].rstrip("/")
    discord.http.Route.BASE = f"{base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        base.replace("http://", "ws://", 1) + "/gateway")
    return hearthbot(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
