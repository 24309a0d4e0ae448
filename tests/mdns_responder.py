"""A DNS-SD responder for the mDNS interoperability tests, on python-zeroconf
(the responder Home Assistant uses; nothing in this repository implements
it). Driven over stdin, one JSON command per line; answers one JSON line per
command on stdout once it is done:

  {"op": "register", "name": "n1", "type": "_mlx-lm._tcp.local.",
   "host": "n1.local.", "address": "169.254.77.2", "port": 8080,
   "txt": {"weight": "2"}, "ttl": 10}
  {"op": "update", ...same fields...}     # new TXT / port, same name
  {"op": "unregister", "name": "n1"}      # goodbye packets (TTL 0)

`ttl` sets both the host (SRV, A) and the other (PTR, TXT) record TTLs.
Arguments: the IPv4 addresses of the interfaces to use.
Killing the process with SIGKILL withdraws nothing (no goodbye).
"""

import json
import socket
import sys

from zeroconf import IPVersion, ServiceInfo, Zeroconf


def info(cmd):
    ttl = int(cmd.get("ttl", 120))
    return ServiceInfo(
        cmd["type"],
        f'{cmd["name"]}.{cmd["type"]}',
        addresses=[socket.inet_aton(cmd["address"])],
        port=int(cmd["port"]),
        properties=cmd.get("txt", {}),
        server=cmd["host"],
        host_ttl=ttl,
        other_ttl=ttl,
    )


def main():
    zc = Zeroconf(interfaces=sys.argv[1:], ip_version=IPVersion.V4Only)
    services = {}
    print(json.dumps({"ok": "start"}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "register":
                services[cmd["name"]] = info(cmd)
                zc.register_service(services[cmd["name"]], allow_name_change=False)
            elif op == "update":
                services[cmd["name"]] = info(cmd)
                zc.update_service(services[cmd["name"]])
            elif op == "unregister":
                zc.unregister_service(services.pop(cmd["name"]))
            else:
                raise ValueError(f"unknown op {op!r}")
            print(json.dumps({"ok": op, "name": cmd.get("name")}), flush=True)
        except Exception as e:  # report, keep serving
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    zc.close()


if __name__ == "__main__":
    main()
