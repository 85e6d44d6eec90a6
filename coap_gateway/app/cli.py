"""``coap-gateway`` command line.

Bad input ends with a one-line error on stderr and exit status 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from aiocoap import Message
from aiocoap.numbers.codes import Code

from .. import __version__
from ..codec import (
    DEFAULT_MAX_SIZE,
    DEFAULT_PROFILE,
    LATEST_CBOR_TABLE,
    compress,
    decompress,
    json_cbor,
    load_cbor_table,
    load_profile,
    profile_names,
    routes,
)
from ..errors import GatewayError

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input that is the user's, not a bug: one line, exit 2."""


def _read_stdin_text() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"input is not UTF-8: {exc}") from None


# ------------------------------------------------------------------ codec


def cmd_codec_encode(args: argparse.Namespace) -> None:
    table = load_cbor_table(args.table)
    value = json_cbor.parse_json(_read_stdin_text().encode("utf-8"))
    data = json_cbor.encode(value, table)
    if args.deflate:
        data = compress(data, load_profile(args.profile).flate or _no_flate(args.profile))
    print(data.hex())


def _no_flate(profile: str):
    raise UsageError(f"profile {profile} does not compress")


def cmd_codec_decode(args: argparse.Namespace) -> None:
    text = "".join(_read_stdin_text().split())
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UsageError("input is not hexadecimal") from None
    if args.deflate:
        data = decompress(data, load_profile(args.profile).flate or _no_flate(args.profile), DEFAULT_MAX_SIZE)
    value = json_cbor.decode(data, load_cbor_table(args.table))
    print(json.dumps(value, ensure_ascii=False, indent=args.indent))


def cmd_codec_route(args: argparse.Namespace) -> None:
    profile = load_profile(args.profile)
    line = routes.http_to_coap(args.method, args.target, profile.routes)
    msg = Message(code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query)
    option_bytes = msg.opt.encode()
    # a round trip proves the mapping is exact before anyone relies on it
    back = routes.coap_to_http(line.method, line.uri_path, line.uri_query, profile.routes)
    assert back == (args.method.upper(), args.target), back
    print(f"code:      0.{line.method:02d} {routes.METHOD_NAMES[line.method]}")
    print(f"route:     {line.template.name if line.template else '(literal path)'}"
          + (f"  code {line.template.code} ({line.template.code_char!r})" if line.template else ""))
    for value in line.uri_path:
        print(f"Uri-Path:  {value!r}  ({len(value.encode())} B)")
    for value in line.uri_query:
        print(f"Uri-Query: {value!r}  ({len(value.encode())} B)")
    print(f"options:   {len(option_bytes)} B encoded ({option_bytes.hex()})")
    print(f"header:    4 B CoAP header + token; profile {profile.name} (routes v{profile.routes.version})")


# ------------------------------------------------------------------- dict


def cmd_dict_build(args: argparse.Namespace) -> None:
    from ..tools import build_dictionary

    build_dictionary(
        out_dir=Path(args.out),
        corpora=[Path(c) for c in args.corpus or ()],
        record_to=Path(args.record_to) if args.record_to else None,
        runs=args.runs,
        table_version=args.table,
        size=args.size,
        scale=args.scale,
        seed=args.seed,
        set_profile=args.set_profile,
    )


def cmd_dict_info(args: argparse.Namespace) -> None:
    for name in profile_names():
        p = load_profile(name)
        print(f"profile {p.id} {p.name}: cbor table v{p.cbor_table.version} ({p.cbor_table.digest[:19]}…), "
              f"routes v{p.routes.version} ({len(p.routes)} routes), "
              f"flate {p.flate.digest[:19] + '… ' + str(len(p.flate.data)) + ' B' if p.flate and p.flate.data else 'none'}")


# ------------------------------------------------------------------- keys


def cmd_keygen(args: argparse.Namespace) -> None:
    from ..secure import keys

    private, public = keys.generate_keypair()
    keys.write_private_key(args.path, private, force=args.force)
    print(keys.encode_key(public))
    print(f"{keys.fingerprint(public)}  private key written to {args.path} (mode 0600)", file=sys.stderr)


def cmd_advertisement(args: argparse.Namespace) -> None:
    from ..secure import keys
    from .discovery import well_known_entry

    if args.key and args.public_key:
        raise SystemExit("give --key or --public-key, not both")
    public = (keys.public_from_private(keys.read_private_key(args.key)) if args.key
              else keys.decode_key(args.public_key) if args.public_key else None)
    if public is None:
        print("no --key or --public-key: a plaintext endpoint (nothing to pin)", file=sys.stderr)
    print(json.dumps(well_known_entry(args.address, public, load_profile(args.profile)), indent=2))


def cmd_pins(args: argparse.Namespace) -> None:
    from ..secure import keys

    store = keys.PinStore(args.pins)
    if args.pins_command == "list":
        for server in store.servers():
            public = store.get(server)
            print(f"{server}  {keys.fingerprint(public)}  {keys.encode_key(public)}")
    elif args.pins_command == "accept":
        public = keys.decode_key(args.key)
        old = store.get(args.server)
        store.accept_change(args.server, public)
        before = keys.fingerprint(old) if old else "nothing"
        print(f"{args.server}: now pinned to {keys.fingerprint(public)} (was {before})")
    elif args.pins_command == "forget":
        if not store.forget(args.server):
            raise UsageError(f"no pin for {args.server}")


# ----------------------------------------------------------- gateways


def _serve(factory, args: argparse.Namespace, names: list[str]) -> None:
    from rich.console import Console

    from .daemon import load_config, merged, run

    options = merged(args, load_config(args.config), names)
    console = Console(stderr=True)
    run(lambda: factory(options, console))


def cmd_server(args: argparse.Namespace) -> None:
    from .daemon import SERVER_OPTIONS, serve_server

    _serve(serve_server, args, SERVER_OPTIONS)


def cmd_client(args: argparse.Namespace) -> None:
    from .daemon import CLIENT_OPTIONS, serve_client

    _serve(serve_client, args, CLIENT_OPTIONS)


def cmd_up(args: argparse.Namespace) -> None:
    try:
        from .up import (
            serve_up,  # the one command that needs meshsim (its emulated link)
        )
    except ImportError as exc:
        raise GatewayError(f"`up` emulates the link with meshsim, which cannot be imported: {exc}") from exc

    _serve(serve_up, args, ["data_dir", "listen", "rate", "delay", "loss", "profile", "low_bandwidth", "metrics",
                            "keylog"])


def cmd_federation(args: argparse.Namespace) -> None:
    from .federation import FEDERATION_OPTIONS, serve_federation

    _serve(serve_federation, args, FEDERATION_OPTIONS)


def _federation_parser(sub) -> None:
    fed = sub.add_parser("federation", help="a homeserver's federation through the link (its https_proxy)",
                         epilog="Flags override the --config file (TOML, same keys). docs/operator.md, "
                                "'Federation behind the gateway'.")
    fed.add_argument("--homeserver", metavar="URL",
                     help="this homeserver's federation listener, e.g. http://127.0.0.1:8008 (required)")
    fed.add_argument("--peers", metavar="FILE", help="peers table (TOML): server names -> gateway + key (required)")
    fed.add_argument("--key", metavar="PATH", help="this gateway's static private key (required)")
    fed.add_argument("--generate-key", action="store_true", default=None,
                     help="create the --key file (mode 0600) if it does not exist, and print its public key")
    fed.add_argument("--listen", metavar="ADDR", help="the link: udp://HOST:PORT (default udp://0.0.0.0:5684)")
    fed.add_argument("--proxy", metavar="HOST:PORT",
                     help="where the homeserver's https_proxy points (default 127.0.0.1:8449; keep it on loopback)")
    fed.add_argument("--ca-dir", metavar="DIR", help="the federation CA (made on first run; default: the key's directory)")
    fed.add_argument("--state-dir", metavar="DIR", help="replay protection across restarts (default: the key's directory)")
    fed.add_argument("--profile", help="table profile (default lb4)")
    fed.add_argument("--low-bandwidth", action="store_true", default=None,
                     help="answer transactions of nothing but typing, receipts and presence here (they never cross)")
    fed.add_argument("--plain", action="store_true", default=None,
                     help="send transactions in the plain mapping, not the compact form (docs/protocol.md §11a)")
    fed.add_argument("--request-timeout", metavar="SECONDS",
                     help="how long one federation request may take: the homeserver's answer, and the longest "
                          "silence from the peer gateway while its answer is awaited (at most 4x this in all; "
                          "default 120)")
    fed.add_argument("--config", metavar="FILE", help="TOML file with any of these options")
    _keylog_flag(fed)
    _link_flags(fed)
    fed.set_defaults(func=cmd_federation)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo()


# ------------------------------------------------------------------- main


def _metrics_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default: {default}; "
                             "a bare PORT binds 127.0.0.1, keep it off public interfaces)")


def _keylog_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keylog", metavar="FILE",
                        help="append every secure session's keys to FILE (0600) so Wireshark can decrypt a capture "
                             "(docs/wireshark.md); also COAP_GATEWAY_KEYLOG=FILE. Off by default: anyone with "
                             "the file reads the traffic")


def _link_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("link timing (retransmission timers follow the link)")
    group.add_argument("--link-rate", metavar="RATE", help="bit rate in netem units: 100bit, 9600bit, 1mbit (default: fast)")
    group.add_argument("--link-latency", metavar="TIME", help="one-way latency: 500ms, 2s (default 0)")
    group.add_argument("--link-overhead", metavar="BYTES", help="bytes the link adds per frame (42: IPv4+UDP+Ethernet; 3: KISS)")
    group.add_argument("--max-retransmit", metavar="N", help="CON retransmissions before giving up (default 4; more on lossy links)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coap-gateway", description="Matrix over CoAP+CBOR+Flate for ~100 bit/s links")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    codec = sub.add_parser("codec", help="the wire codec, by hand").add_subparsers(dest="codec_command", required=True)
    enc = codec.add_parser("encode", help="JSON on stdin -> CBOR hex on stdout")
    dec = codec.add_parser("decode", help="CBOR hex on stdin -> JSON on stdout")
    for p in (enc, dec):
        p.add_argument("--table", type=int, default=LATEST_CBOR_TABLE, help="CBOR table version (1 = MSC3079)")
        p.add_argument("--deflate", action="store_true", help="also (de)compress with the profile's preset dictionary")
        p.add_argument("--profile", default=DEFAULT_PROFILE, help="profile whose dictionary --deflate uses")
    dec.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    enc.set_defaults(func=cmd_codec_encode)
    dec.set_defaults(func=cmd_codec_decode)
    route = codec.add_parser("route", help="show the CoAP request line of an HTTP request")
    route.add_argument("method")
    route.add_argument("target", metavar="PATH_AND_QUERY")
    route.add_argument("--profile", default=DEFAULT_PROFILE, help="profile whose route table to use")
    route.set_defaults(func=cmd_codec_route)

    dictionary = sub.add_parser("dict", help="preset dictionaries").add_subparsers(dest="dict_command", required=True)
    build = dictionary.add_parser("build", help="record traffic from a real Synapse, train a dictionary, report sizes")
    build.add_argument("--out", default=str(Path("dictionaries")), help="dictionaries folder to write into")
    build.add_argument("--corpus", action="append", metavar="JSONL",
                       help="use recorded corpora instead of recording (repeat; the last one is held out)")
    build.add_argument("--runs", type=int, default=3, help="recordings to make: all but the last train, the last is held out")
    build.add_argument("--record-to", help="keep the recorded corpora in this folder")
    build.add_argument("--table", type=int, default=LATEST_CBOR_TABLE, help="CBOR table the dictionary is for")
    build.add_argument("--size", type=int, default=32 * 1024, help="dictionary size in bytes (≤ 32768)")
    build.add_argument("--scale", type=int, default=1, help="workload size multiplier")
    build.add_argument("--seed", type=int, default=1)
    build.add_argument("--set-profile", metavar="NAME", help="point this profile at the new dictionary")
    build.set_defaults(func=cmd_dict_build)
    info = dictionary.add_parser("info", help="list profiles and their tables")
    info.set_defaults(func=cmd_dict_info)

    server = sub.add_parser("server", help="server gateway: CoAP from devices → HTTP to one homeserver",
                            epilog="Flags override the --config file (TOML, same keys).")
    server.add_argument("--homeserver", metavar="URL", help="the homeserver's base URL, e.g. http://127.0.0.1:8008 (required)")
    server.add_argument("--listen", metavar="ADDR", help="udp://HOST:PORT (default udp://0.0.0.0:5683) or serial:/dev/ttyX?baud=N")
    server.add_argument("--key", metavar="PATH", help="static private key (coap-gateway keygen); required unless --plaintext")
    server.add_argument("--generate-key", action="store_true", default=None,
                        help="create the --key file (mode 0600) if it does not exist, and print its public key")
    server.add_argument("--state-dir", metavar="DIR",
                        help="where state that must survive a restart is kept (replay protection); "
                             "default: the --key file's directory")
    server.add_argument("--plaintext", action="store_true", default=None, help="no encryption: only for links that are already trusted")
    server.add_argument("--profile", help="table profile (default lb4; lb3 without the timeline table; lb2 without the compact form; msc3079 for MSC3079 clients)")
    server.add_argument("--allow-admin", action="store_true", default=None, help="let /_synapse/admin through (off by default)")
    server.add_argument("--advertise", metavar="ADDR", help=argparse.SUPPRESS)  # ignored since 2026-12: see `advertisement`
    server.add_argument("--no-sync-push", action="store_true", default=None,
                        help="do not hold devices' /sync loops (every long-poll then crosses the link)")
    server.add_argument("--config", metavar="FILE", help="TOML file with any of these options")
    _metrics_flag(server, "off")
    _keylog_flag(server)
    _link_flags(server)
    server.set_defaults(func=cmd_server)

    client = sub.add_parser("client", help="client gateway: a local HTTP homeserver for any Matrix client",
                            epilog="Flags override the --config file (TOML, same keys).")
    client.add_argument("--server", metavar="ADDR", help="the server gateway: udp://HOST:PORT or serial:/dev/ttyX?baud=N (required)")
    client.add_argument("--server-key", metavar="KEY", help="the server's public key; without it: trust on first use (--pins)")
    client.add_argument("--server-name", help="name the pin is stored under (default: the --server address)")
    client.add_argument("--pins", metavar="FILE", help="pin file (default ~/.config/coap-gateway/pins.json)")
    client.add_argument("--key", metavar="PATH", help="this device's static key (default: a new one per run)")
    client.add_argument("--plaintext", action="store_true", default=None, help="no encryption: only for trusted links")
    client.add_argument("--listen", metavar="HOST:PORT", help="where Matrix clients connect (default 127.0.0.1:8008)")
    client.add_argument("--local", metavar="ADDR", help="local UDP address to send from (default any)")
    client.add_argument("--profile", help="table profile (default lb4)")
    client.add_argument("--low-bandwidth", action="store_true", default=None,
                        help="answer typing, read receipts and presence updates locally instead of sending them")
    client.add_argument("--keepalive", metavar="SECONDS",
                        help="NAT keepalive: a CoAP ping (42 B sealed, 8 B plaintext, both ways) after this long "
                             "without a frame sent (default: off; idle costs 0 B with sync push)")
    client.add_argument("--no-sync-push", action="store_true", default=None,
                        help="send every /sync long-poll across the link instead of registering for pushes")
    client.add_argument("--config", metavar="FILE", help="TOML file with any of these options")
    _metrics_flag(client, "off")
    _keylog_flag(client)
    _link_flags(client)
    client.set_defaults(func=cmd_client)

    up = sub.add_parser("up", help="everything on this machine: Synapse, both gateways, an emulated slow link")
    up.add_argument("--data-dir", help="where Synapse and the keys live (default var/up)")
    up.add_argument("--listen", metavar="HOST:PORT", help="where Matrix clients connect (default 127.0.0.1:8008)")
    up.add_argument("--rate", help="link rate, netem units (default 2400bit)")
    up.add_argument("--delay", help="one-way delay (default 100ms)")
    up.add_argument("--loss", type=float, help="loss probability 0..1 (default 0)")
    up.add_argument("--profile", help="table profile (default lb4)")
    up.add_argument("--low-bandwidth", action="store_true", default=None,
                    help="answer typing, read receipts and presence updates locally")
    up.add_argument("--config", metavar="FILE", help="TOML file with any of these options")
    _keylog_flag(up)
    _metrics_flag(up, "127.0.0.1, a free port")
    up.set_defaults(func=cmd_up)

    keygen = sub.add_parser("keygen", help="write a new static key pair; print the public key")
    keygen.add_argument("path", help="private key file to create (mode 0600)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(func=cmd_keygen)

    advert = sub.add_parser("advertisement", help="print the /.well-known/matrix/client entry that announces a server gateway")
    advert.add_argument("--address", required=True, metavar="ADDR",
                        help="where devices reach the server gateway, e.g. udp://lb.example.org:5683")
    advert.add_argument("--key", metavar="PATH", help="the server gateway's private key file (only its public key is printed)")
    advert.add_argument("--public-key", metavar="KEY", help="or its public key (base64), as `keygen` printed it")
    advert.add_argument("--profile", default=DEFAULT_PROFILE, help="the profile the server gateway serves")
    advert.set_defaults(func=cmd_advertisement)

    pins = sub.add_parser("pins", help="server keys trusted on first use").add_subparsers(dest="pins_command", required=True)
    for name, helptext in (("list", "show pinned servers"), ("accept", "accept a server's new key"),
                           ("forget", "forget a server's pin")):
        p = pins.add_parser(name, help=helptext)
        p.add_argument("--pins", required=True, help="pin file")
        if name != "list":
            p.add_argument("server", help="server name as configured on the client")
        if name == "accept":
            p.add_argument("key", help="the server's new public key (base64), as `coap-gateway keygen` printed it")
        p.set_defaults(func=cmd_pins)

    _federation_parser(sub)

    demo = sub.add_parser("demo", help="show the reference Matrix send through the codec, byte by byte")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (GatewayError, UsageError) as exc:
        print(f"coap-gateway: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileExistsError as exc:
        print(f"coap-gateway: error: {exc.filename} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path the user gave: missing, unreadable, …
        print(f"coap-gateway: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
