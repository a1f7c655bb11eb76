"""A PgBouncer for a local run: transaction pooling onto one PostgreSQL server, trust
authentication, on a free port. Used by the bench's ``ours-pgbouncer`` peer and by
``.ci/run``'s PgBouncer stage (Debian's ``pgbouncer`` package in both).

``python -m bench.pgbouncer DIR [HOST [PORT [USER]]]`` writes ``DIR/pgbouncer.ini`` (with
a log and a pid file there, for ``pgbouncer -d``) and prints the port it listens on.
"""

import sys
from pathlib import Path

from bench.ports import free_port


def write_config(
    folder: Path, *, host: str = "127.0.0.1", port: int = 5432, user: str = "postgres"
) -> tuple[Path, int]:
    """Write ``pgbouncer.ini`` and its user list into ``folder``; return the file and the
    port the bouncer will listen on."""
    listen = free_port()
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {listen}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder}/userlist.txt",
                "pool_mode = transaction",
                "max_client_conn = 200",
                "default_pool_size = 20",
                # psycopg and Django send these at connect; the bouncer would refuse them.
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {folder}/pgbouncer.log",
                f"pidfile = {folder}/pgbouncer.pid",
                "",
            ]
        )
    )
    return ini, listen


if __name__ == "__main__":
    args = sys.argv[1:]
    if not 1 <= len(args) <= 4:
        sys.exit("usage: python -m bench.pgbouncer DIR [HOST [PORT [USER]]]")
    host, server_port, user = (args[1:] + ["127.0.0.1", "5432", "postgres"][len(args) - 1 :])[:3]
    _, listening = write_config(Path(args[0]), host=host, port=int(server_port), user=user)
    print(listening)
