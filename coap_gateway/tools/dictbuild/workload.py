"""A scripted, seeded Matrix client workload, driven through matrix-nio.

``run_workload`` plays a small community through a homeserver (normally
through a ``RecordingProxy``): sign-up and log-in, start-up requests the way
real clients make them, rooms of every common shape, a chat with realistic
messages (replies, edits, reactions, threads, formatted and encrypted
bodies), history paging, profiles, presence, account data, devices, the
key/to-device traffic of an E2EE client, media, push rules, directories, and
the errors clients actually meet (403, 404, 400 M_NOT_JSON, 401, 413,
M_USER_IN_USE, 429).  The recorded bodies are what the gateway's dictionaries
and codec tables are built from, so the point is representativeness.

Everything the workload chooses comes from ``random.Random(seed)``, and it
never lets a server-generated value steer a choice, so two runs differ only in
IDs, tokens and timestamps the server makes up.

nio is used wherever it has the call; everything else goes through
``AsyncClient.send`` with paths built by ``nio.Api._build_path``, so every
path is quoted exactly the way nio quotes its own.

A real 429 needs a homeserver willing to give one: pass ``limit_user``, an
async callable that tightens the message rate limit of the user ID it is
given (``LocalSynapse.override_ratelimit`` does).  Without it the rate-limit
step is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    MessageDirection,
    RoomPreset,
    RoomVisibility,
)

__all__ = ["ChatText", "WorkloadError", "run_workload", "tiny_png"]

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
MEDIA_V1 = "/_matrix/client/v1/media"

# Element-style sync filter: lazy-loaded members, a modest timeline.
LAZY_FILTER: dict[str, Any] = {
    "room": {
        "state": {"lazy_load_members": True},
        "timeline": {"limit": 20, "unread_thread_notifications": True},
    },
}
# Events as servers exchange them: hashes, signatures, auth/prev events, depth.
FEDERATION_FILTER: dict[str, Any] = {
    "event_format": "federation",
    "room": {"timeline": {"limit": 10}},
}


class WorkloadError(RuntimeError):
    """The homeserver did not answer the way the script expects."""


# -- text -------------------------------------------------------------------

_WORDS = (
    "the a to and of I you it is that in we for on this be have with not are "
    "just do was so but what can it's my me at all if your about will get up "
    "out there think know like don't one time now how when yeah ok good they "
    "would could should then see go going back more some any here also need "
    "want maybe today tomorrow later meeting build release server client room "
    "message sync link radio node mesh gateway packet battery antenna signal "
    "weather coffee lunch team plan test bug fix patch deploy config log "
    "update check works broken slow fast again really probably actually "
    "anyone someone thanks sorry please great nice cool weird sure right "
    "tonight weekend morning evening week map route field station relay "
    "power solar storm river bridge road camp north south east west"
).split()
_NON_ASCII = (
    "café", "naïve", "Grüße", "señor", "smörgåsbord", "Zürich", "façade",
    "crème brûlée", "Привет", "спасибо", "こんにちは", "ありがとう", "你好",
    "東京", "Ελλάδα", "αλφάβητο", "שלום", "مرحبا", "über", "øl", "jalapeño",
)
_EMOJI = ("😀", "👍", "🎉", "🙂", "😂", "❤️", "🚀", "🤔", "✅", "🔥", "🙏", "👀", "😅", "📡", "⚡")
_SHORT = (
    "ok", "lol", "+1", "thanks!", "yes", "no", "brb", "on it", "nice", "hmm",
    "morning all", "good night", "ack", "sure thing", "haha", "same", "done",
)
_REACTION_KEYS = ("👍", "❤️", "😂", "🎉", "👀", "✅", "🙏", "😮")


class ChatText:
    """English-like chat lines of varied length from a seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def sentence(self, words: int) -> str:
        picked = [self.rng.choice(_WORDS) for _ in range(words)]
        if self.rng.random() < 0.12:
            picked.insert(self.rng.randrange(len(picked) + 1), self.rng.choice(_NON_ASCII))
        text = " ".join(picked)
        end = self.rng.choices([".", "?", "!", "", "..."], weights=[40, 20, 10, 25, 5])[0]
        return text[0].upper() + text[1:] + end

    def line(self, mention: str | None = None) -> str:
        """One chat message body."""
        kind = self.rng.choices(
            ["short", "medium", "long", "essay"], weights=[30, 45, 18, 7]
        )[0]
        if kind == "short":
            text = self.rng.choice(_SHORT)
        elif kind == "medium":
            text = self.sentence(self.rng.randint(4, 14))
        elif kind == "long":
            text = " ".join(self.sentence(self.rng.randint(6, 16)) for _ in range(self.rng.randint(2, 3)))
        else:
            text = " ".join(self.sentence(self.rng.randint(8, 20)) for _ in range(self.rng.randint(4, 8)))
        if mention is not None and self.rng.random() < 0.5:
            text = f"{mention}: {text}"
        if self.rng.random() < 0.05:
            text += f" https://example.org/{self.rng.choice(_WORDS)}/{self.rng.randint(1, 9999)}"
        if self.rng.random() < 0.15:
            text += " " + self.rng.choice(_EMOJI)
        return text

    def html(self) -> tuple[str, str]:
        """A formatted message: (plain body, org.matrix.custom.html body)."""
        word = self.rng.choice(_WORDS)
        sentence = self.sentence(self.rng.randint(4, 10))
        style = self.rng.randrange(4)
        if style == 0:
            return f"**{word}** {sentence}", f"<strong>{word}</strong> {sentence}"
        if style == 1:
            code = f"{word}_{self.rng.choice(_WORDS)}({self.rng.randint(0, 99)})"
            return f"try `{code}`", f"try <code>{code}</code>"
        if style == 2:
            items = [self.sentence(self.rng.randint(2, 5)) for _ in range(3)]
            plain = "\n".join(f"- {item}" for item in items)
            return plain, "<ul>\n" + "".join(f"<li>{item}</li>\n" for item in items) + "</ul>\n"
        lines = [f"{self.rng.choice(_WORDS)} = {self.rng.randint(0, 999)}" for _ in range(3)]
        plain = "```\n" + "\n".join(lines) + "\n```"
        return plain, "<pre><code>" + "\n".join(lines) + "\n</code></pre>\n"


def tiny_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid, small RGB PNG (a gradient), so thumbnailing really works."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(
            bytes(((rgb[0] + 8 * x) % 256, (rgb[1] + 8 * y) % 256, rgb[2])) for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _b64(data: bytes) -> str:
    """Unpadded standard base64, as Matrix writes keys and ciphertext."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


# -- actors -----------------------------------------------------------------


@dataclass
class User:
    name: str
    password: str
    client: AsyncClient
    user_id: str = ""
    device_id: str = ""
    curve25519: str = ""
    ed25519: str = ""
    filter_id: str = ""

    @property
    def token(self) -> str:
        return self.client.access_token


@dataclass
class Room:
    room_id: str
    label: str
    members: list[str]  # names, in join order
    encrypted: bool = False
    # (event_id, sender name), in send order
    events: list[tuple[str, str]] = field(default_factory=list)
    # Messages without a rel_type relation: what replies, edits, reactions
    # and threads may point at (Synapse refuses threads rooted in relations).
    targets: list[tuple[str, str]] = field(default_factory=list)
    thread_roots: list[str] = field(default_factory=list)


# -- the script -------------------------------------------------------------


class Workload:
    def __init__(
        self,
        base_url: str,
        seed: int,
        scale: int,
        progress: Callable[[str], None] | None,
        limit_user: Callable[[str], Awaitable[None]] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.rng = random.Random(seed)
        self.text = ChatText(self.rng)
        self.scale = max(1, scale)
        self.progress = progress or (lambda _message: None)
        self.limit_user = limit_user
        # Usernames carry the seed so a rerun against the same homeserver
        # does not collide with the accounts of an earlier run.
        self.suffix = f"s{seed}"
        self.users: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}
        self.clients: list[AsyncClient] = []
        self.anonymous = self.new_client()
        # Learnt along the way:
        self.server_name = ""
        self.general_alias = ""
        self.space_id = ""
        self.avatars: dict[str, str] = {}  # user name -> mxc URI
        self.photo: tuple[str, int] = ("", 0)  # mxc URI, size
        self.session_ids: dict[tuple[str, str], str] = {}  # (room, sender) -> megolm session
        self.federation_filter = ""
        self.federation_since = ""

    # -- plumbing -------------------------------------------------------

    def new_client(self, user: str = "") -> AsyncClient:
        # max_limit_exceeded=0: a 429 comes back to the script instead of
        # nio sleeping and retrying by itself.
        client = AsyncClient(self.base_url, user, config=AsyncClientConfig(max_limit_exceeded=0))
        self.clients.append(client)
        return client

    def txn(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def random_b64(self, size: int) -> str:
        return _b64(self.rng.randbytes(size))

    @staticmethod
    def ok(response: Any, what: str) -> Any:
        if isinstance(response, ErrorResponse):
            raise WorkloadError(f"{what}: {response}")
        return response

    @staticmethod
    def fails(response: Any, errcode: str, what: str) -> Any:
        if not isinstance(response, ErrorResponse) or response.status_code != errcode:
            raise WorkloadError(f"{what}: expected {errcode}, got {response}")
        return response

    async def raw(
        self,
        user: User | None,
        method: str,
        path: list[str] | str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        base: str = V3,
        token: str | None = None,
        expect: int | tuple[int, ...] = 200,
    ) -> Any:
        """A request nio has no method for; returns the parsed JSON body."""
        built = Api._build_path(path, query, base) if isinstance(path, list) else path
        headers: dict[str, str] = {}
        if body is not None or data is not None:
            headers["Content-Type"] = content_type
        bearer = token if token is not None else (user.token if user is not None else None)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        payload: bytes | None = data
        if body is not None:
            payload = Api.to_json(body).encode()  # the same bytes nio would send
        client = user.client if user is not None else self.anonymous
        response = await client.send(method, built, payload, headers)
        try:
            raw = await response.read()
            status = response.status
        finally:
            response.release()
        expected = (expect,) if isinstance(expect, int) else expect
        if status not in expected:
            raise WorkloadError(f"{method} {built}: expected {expected}, got {status} {raw[:300]!r}")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw

    # -- phases ---------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.discover()
            await self.sign_up()
            await self.start_clients()
            await self.media_and_profiles()
            await self.create_rooms()
            await self.federation_view(initial=True)
            await self.conversation(rounds=110 * self.scale)
            await self.long_polls()
            await self.history()
            await self.membership_changes()
            await self.account_state()
            await self.directories()
            await self.encryption_traffic()
            await self.push_and_notifications()
            await self.federation_view(initial=False)
            await self.errors()
            await self.rate_limit()
            await self.sign_out()
        finally:
            for client in self.clients:
                await client.close()

    async def discover(self) -> None:
        self.progress("discovery")
        await self.raw(None, "GET", "/.well-known/matrix/client", expect=(200, 404))
        await self.raw(None, "GET", "/_matrix/client/versions")
        self.ok(await self.anonymous.login_info(), "login flows")
        keys = await self.raw(None, "GET", "/_matrix/key/v2/server")
        self.server_name = keys["server_name"]
        await self.raw(None, "GET", "/_matrix/federation/v1/version")

    async def sign_up(self) -> None:
        self.progress("registration")
        names = ["alice", "bob", "carol", "dave"]
        # Synapse answers /register/available only about once a second, so
        # ask just twice: a free name here, a taken one below.
        await self.raw(None, "GET", ["register", "available"], query={"username": f"alice-{self.suffix}"})
        for name in names:
            username = f"{name}-{self.suffix}"
            registrar = self.new_client()
            response = self.ok(
                await registrar.register(username, f"{name}-password-{self.suffix}", f"{name}'s phone"),
                f"register {name}",
            )
            user = User(name, f"{name}-password-{self.suffix}", self.new_client(response.user_id))
            user.user_id = response.user_id
            self.users[name] = user
        # Taken names: once through the availability check, once for real.
        taken = f"alice-{self.suffix}"
        await self.raw(None, "GET", ["register", "available"], query={"username": taken}, expect=400)
        self.fails(
            await self.new_client().register(taken, "another-password", "intruder"),
            "M_USER_IN_USE",
            "register a taken name",
        )

    async def start_clients(self) -> None:
        """What a client does right after login, for every user."""
        self.progress("login and client start-up")
        intruder = self.new_client(self.users["alice"].user_id)
        self.fails(await intruder.login("not-the-password", "laptop"), "M_FORBIDDEN", "bad password")
        for user in self.users.values():
            login = self.ok(await user.client.login(user.password, f"{user.name.title()}'s laptop"), "login")
            user.device_id = login.device_id
            self.ok(await user.client.whoami(), "whoami")
            await self.raw(user, "GET", ["capabilities"])
            await self.raw(user, "GET", f"{V3}/pushrules/")
            await self.raw(user, "GET", ["voip", "turnServer"])
            await self.raw(user, "GET", ["thirdparty", "protocols"])
            await self.raw(user, "GET", ["room_keys", "version"], expect=404)
            await self.raw(user, "GET", ["user", user.user_id, "account_data", "m.direct"], expect=404)
            uploaded = self.ok(await user.client.upload_filter(user.user_id, **LAZY_FILTER), "filter upload")
            user.filter_id = uploaded.filter_id
            await self.raw(user, "GET", ["user", user.user_id, "filter", user.filter_id])
            self.ok(await user.client.sync(timeout=0, sync_filter=user.filter_id, full_state=True), "initial sync")
            await self.upload_device_keys(user)
            self.ok(await user.client.get_profile(user.user_id), "own profile")

    async def upload_device_keys(self, user: User) -> None:
        """Synthetic device keys, one-time keys and a fallback key.

        Synapse checks the shape, not the signatures, on upload.
        """
        user.curve25519 = self.random_b64(32)
        user.ed25519 = self.random_b64(32)
        device = user.device_id

        def signed(payload: dict[str, Any]) -> dict[str, Any]:
            return {**payload, "signatures": {user.user_id: {f"ed25519:{device}": self.random_b64(64)}}}

        body = {
            "device_keys": signed(
                {
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                    "device_id": device,
                    "keys": {f"curve25519:{device}": user.curve25519, f"ed25519:{device}": user.ed25519},
                    "user_id": user.user_id,
                }
            ),
            "one_time_keys": {
                f"signed_curve25519:{_b64(struct.pack('>I', n + 1))}": signed({"key": self.random_b64(32)})
                for n in range(5)
            },
            "fallback_keys": {
                "signed_curve25519:AAAAGj": signed({"key": self.random_b64(32), "fallback": True})
            },
        }
        counts = await self.raw(user, "POST", ["keys", "upload"], body=body)
        if counts.get("one_time_key_counts", {}).get("signed_curve25519") != 5:
            raise WorkloadError(f"keys/upload counted {counts}")

    async def media_and_profiles(self) -> None:
        self.progress("media and profiles")
        alice = self.users["alice"]
        await self.raw(alice, "GET", ["config"], base=MEDIA_V1)
        for user in self.users.values():
            png = tiny_png(16, 16, (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256)))
            uploaded, _ = await user.client.upload(
                lambda _got_429, _timeouts, png=png: png,
                content_type="image/png",
                filename=f"{user.name}.png",
                filesize=len(png),
            )
            self.ok(uploaded, "avatar upload")
            self.avatars[user.name] = uploaded.content_uri
            self.ok(await user.client.set_displayname(user.name.title()), "displayname")
            self.ok(await user.client.set_avatar(uploaded.content_uri), "avatar")
        downloaded = self.ok(await self.users["bob"].client.download(self.avatars["alice"]), "download")
        if not downloaded.body.startswith(b"\x89PNG"):
            raise WorkloadError("downloaded avatar is not the PNG that was uploaded")
        server, media_id = self.avatars["alice"][len("mxc://"):].split("/", 1)
        self.ok(await self.users["bob"].client.thumbnail(server, media_id, 32, 32), "thumbnail")
        photo = tiny_png(24, 16, (200, 120, 40))
        uploaded, _ = await alice.client.upload(
            lambda _a, _b: photo, content_type="image/png", filename="antenna.png", filesize=len(photo)
        )
        self.photo = (self.ok(uploaded, "photo upload").content_uri, len(photo))
        for name in ("alice", "carol"):
            self.ok(await self.users["bob"].client.get_displayname(self.users[name].user_id), "displayname")
            self.ok(await self.users["bob"].client.get_avatar(self.users[name].user_id), "avatar")

    async def create_rooms(self) -> None:
        self.progress("rooms")
        alice, bob, carol, dave = (self.users[n] for n in ("alice", "bob", "carol", "dave"))
        self.general_alias = f"#general-{self.suffix}:{self.server_name}"

        created = self.ok(
            await alice.client.room_create(
                visibility=RoomVisibility.public,
                alias=f"general-{self.suffix}",
                name="General",
                topic="Everything that doesn't fit elsewhere. Be nice 🙂",
                preset=RoomPreset.public_chat,
            ),
            "create General",
        )
        general = Room(created.room_id, "general", ["alice"])
        self.rooms["general"] = general
        for user in (bob, carol, dave):
            self.ok(await user.client.join(self.general_alias), "join by alias")
            general.members.append(user.name)

        created = self.ok(
            await bob.client.room_create(
                name="Project Antenna",
                topic="Field tests of the 100 bit/s link",
                preset=RoomPreset.private_chat,
                invite=[alice.user_id],
            ),
            "create Project",
        )
        project = Room(created.room_id, "project", ["bob"])
        self.rooms["project"] = project
        self.ok(await alice.client.join(project.room_id), "accept invite")
        project.members.append("alice")
        self.ok(await bob.client.room_invite(project.room_id, carol.user_id), "invite")
        self.ok(await carol.client.join(project.room_id), "accept invite")
        project.members.append("carol")

        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        created = self.ok(
            await alice.client.room_create(
                is_direct=True,
                preset=RoomPreset.trusted_private_chat,
                invite=[carol.user_id],
                initial_state=[encryption],
            ),
            "create DM",
        )
        dm = Room(created.room_id, "dm", ["alice"], encrypted=True)
        self.rooms["dm"] = dm
        self.ok(await carol.client.join(dm.room_id), "join DM")
        dm.members.append("carol")
        for me, other in ((alice, carol), (carol, alice)):
            await self.raw(me, "PUT", ["user", me.user_id, "account_data", "m.direct"], body={other.user_id: [dm.room_id]})

        created = self.ok(
            await carol.client.room_create(
                name="Night shift",
                preset=RoomPreset.private_chat,
                invite=[bob.user_id, dave.user_id],
                initial_state=[encryption],
            ),
            "create encrypted group",
        )
        night = Room(created.room_id, "night", ["carol"], encrypted=True)
        self.rooms["night"] = night
        for user in (bob, dave):
            self.ok(await user.client.join(night.room_id), "join encrypted group")
            night.members.append(user.name)

        # Room state an admin sets up after creation.
        self.ok(await alice.client.update_room_topic(general.room_id, "General chat — field reports welcome"), "topic")
        self.ok(
            await alice.client.room_put_state(general.room_id, "m.room.avatar", {"url": self.avatars["alice"]}),
            "room avatar",
        )
        self.ok(
            await alice.client.room_put_state(
                general.room_id,
                "org.example.station",
                {"callsign": "GW1", "frequency_khz": 868100, "bitrate": 100},
                state_key="gw1",
            ),
            "custom state",
        )
        power = self.ok(await alice.client.room_get_state_event(general.room_id, "m.room.power_levels"), "power levels")
        levels = dict(power.content)
        levels["users"] = {**levels.get("users", {}), bob.user_id: 50}
        levels["events"] = {**levels.get("events", {}), "org.example.station": 50}
        self.ok(await alice.client.room_put_state(general.room_id, "m.room.power_levels", levels), "set power levels")
        self.ok(
            await bob.client.room_put_state(project.room_id, "m.room.history_visibility", {"history_visibility": "joined"}),
            "history visibility",
        )
        self.ok(await bob.client.room_put_state(project.room_id, "m.room.guest_access", {"guest_access": "forbidden"}), "guest access")

        # A space holding the public room.
        created = self.ok(
            await alice.client.room_create(name="Field Ops", topic="All our rooms", space=True, preset=RoomPreset.public_chat),
            "create space",
        )
        self.space_id = created.room_id
        via = {"via": [self.server_name], "suggested": True}
        self.ok(await alice.client.room_put_state(self.space_id, "m.space.child", via, state_key=general.room_id), "space child")
        self.ok(
            await alice.client.room_put_state(general.room_id, "m.space.parent", {"via": [self.server_name], "canonical": True}, state_key=self.space_id),
            "space parent",
        )
        self.ok(await bob.client.space_get_hierarchy(self.space_id, limit=10), "space hierarchy")

        for user in self.users.values():
            self.ok(await user.client.sync(timeout=0, sync_filter=user.filter_id), "sync after rooms")

    # -- chat -----------------------------------------------------------

    def pick_room(self) -> Room:
        labels = ["general", "project", "dm", "night"]
        return self.rooms[self.rng.choices(labels, weights=[40, 25, 20, 15])[0]]

    def display(self, name: str) -> str:
        return name.title()

    async def send(self, room: Room, sender: User, event_type: str, content: dict[str, Any]) -> str:
        """Send one event; encrypted rooms get a synthetic megolm payload."""
        is_target = event_type == "m.room.message" and "rel_type" not in content.get("m.relates_to", {})
        if room.encrypted:
            plaintext = json.dumps({"type": event_type, "content": content, "room_id": room.room_id})
            # Size of a real megolm message for this plaintext: version,
            # index, AES-CBC blocks, MAC, ed25519 signature.
            size = 1 + 5 + (len(plaintext.encode()) // 16 + 1) * 16 + 8 + 64
            encrypted: dict[str, Any] = {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": self.random_b64(size),
                "device_id": sender.device_id,
                "sender_key": sender.curve25519,
                "session_id": self.session_ids.setdefault((room.label, sender.name), self.random_b64(32)),
            }
            # Relations stay in clear so the server can aggregate them.
            if "m.relates_to" in content:
                encrypted["m.relates_to"] = content["m.relates_to"]
            content, event_type = encrypted, "m.room.encrypted"
            reply = await self.raw(
                sender, "PUT", ["rooms", room.room_id, "send", event_type, self.txn()], body=content
            )
            event_id = reply["event_id"]
        else:
            response = self.ok(
                await sender.client.room_send(room.room_id, event_type, content, tx_id=self.txn()),
                f"send {event_type}",
            )
            event_id = response.event_id
        room.events.append((event_id, sender.name))
        if is_target:
            room.targets.append((event_id, sender.name))
        return event_id

    def message_content(self, room: Room, sender: User) -> tuple[str, dict[str, Any]]:
        others = [n for n in room.members if n != sender.name]
        mention = self.display(self.rng.choice(others)) if others and self.rng.random() < 0.2 else None
        kind = self.rng.choices(
            ["text", "html", "notice", "emote", "reply", "edit", "reaction", "thread", "image", "file", "location"],
            weights=[50, 8, 3, 3, 10, 5, 10, 5, 2, 2, 1],
        )[0]
        if not room.targets and kind in ("reply", "edit", "reaction", "thread"):
            kind = "text"
        if kind == "text":
            return "m.room.message", {"msgtype": "m.text", "body": self.text.line(mention)}
        if kind == "html":
            body, html = self.text.html()
            return "m.room.message", {
                "msgtype": "m.text", "body": body, "format": "org.matrix.custom.html", "formatted_body": html,
            }
        if kind == "notice":
            return "m.room.message", {"msgtype": "m.notice", "body": f"Link check: {self.rng.randint(20, 99)}% delivered, RTT {self.rng.randint(2, 60)} s"}
        if kind == "emote":
            return "m.room.message", {"msgtype": "m.emote", "body": self.text.sentence(self.rng.randint(2, 6)).lower()}
        if kind in ("image", "file", "location"):
            return self.attachment_content(kind)
        target, target_sender = self.rng.choice(room.targets[-12:])
        if kind == "reply":
            return "m.room.message", {
                "msgtype": "m.text",
                "body": self.text.line(),
                "m.relates_to": {"m.in_reply_to": {"event_id": target}},
                "m.mentions": {"user_ids": [self.users[target_sender].user_id]},
            }
        if kind == "edit":
            own = [e for e, s in room.targets[-12:] if s == sender.name]
            if not own:
                return "m.room.message", {"msgtype": "m.text", "body": self.text.line(mention)}
            if own:
                target = own[-1]
            new_body = self.text.line()
            return "m.room.message", {
                "msgtype": "m.text",
                "body": f"* {new_body}",
                "m.new_content": {"msgtype": "m.text", "body": new_body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": target},
            }
        if kind == "reaction":
            return "m.reaction", {
                "m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": self.rng.choice(_REACTION_KEYS)},
            }
        if kind == "thread":
            if room.thread_roots and self.rng.random() < 0.6:
                root = self.rng.choice(room.thread_roots)
            else:
                root = target
                room.thread_roots.append(root)
            return "m.room.message", {
                "msgtype": "m.text",
                "body": self.text.line(),
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": root,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": target},
                },
            }
        raise AssertionError(kind)

    def attachment_content(self, kind: str) -> tuple[str, dict[str, Any]]:
        if kind == "image":
            uri, size = self.photo
            return "m.room.message", {
                "msgtype": "m.image", "body": "antenna.png", "url": uri,
                "info": {"mimetype": "image/png", "size": size, "w": 24, "h": 16},
            }
        if kind == "file":
            uri, size = self.photo
            return "m.room.message", {
                "msgtype": "m.file", "body": f"{self.rng.choice(_WORDS)}-log.txt", "url": uri,
                "info": {"mimetype": "text/plain", "size": size},
            }
        lat, lon = 47 + self.rng.random(), 8 + self.rng.random()
        return "m.room.message", {
            "msgtype": "m.location", "body": f"Station at {lat:.5f}, {lon:.5f}", "geo_uri": f"geo:{lat:.5f},{lon:.5f}",
        }

    async def conversation(self, rounds: int) -> None:
        self.progress(f"conversation ({rounds} rounds)")
        for turn in range(rounds):
            room = self.pick_room()
            sender = self.users[self.rng.choice(room.members)]
            typing = self.rng.random() < 0.15
            if typing:
                self.ok(await sender.client.room_typing(room.room_id, True, timeout=30000), "typing")
            event_type, content = self.message_content(room, sender)
            await self.send(room, sender, event_type, content)
            if typing:
                self.ok(await sender.client.room_typing(room.room_id, False), "typing stop")
            if self.rng.random() < 0.04:
                await self.redact_one(room)
            if turn % 12 == 11:
                await self.catch_up()

    async def redact_one(self, room: Room) -> None:
        own = [(e, s) for e, s in room.events[-10:]]
        event_id, sender = self.rng.choice(own)
        redactor = self.users[sender] if sender in room.members else self.users[room.members[0]]
        reason = self.rng.choice([None, "typo", "wrong room", "spam"])
        self.ok(await redactor.client.room_redact(room.room_id, event_id, reason, tx_id=self.txn()), "redact")

    async def catch_up(self) -> None:
        """Every member syncs, then marks what it read."""
        for user in self.users.values():
            self.ok(await user.client.sync(timeout=0, sync_filter=user.filter_id), "incremental sync")
            for room in self.rooms.values():
                if user.name not in room.members or not room.targets:
                    continue
                # A main-timeline event: a receipt for thread "main" may not
                # point into a thread.
                last, _ = room.targets[-1]
                if self.rng.random() < 0.5:
                    self.ok(await user.client.update_receipt_marker(room.room_id, last), "receipt")
                elif self.rng.random() < 0.5:
                    self.ok(await user.client.room_read_markers(room.room_id, last, last), "read markers")

    async def long_polls(self) -> None:
        """Long-poll syncs: one that times out empty, one woken by a message."""
        self.progress("long-poll sync")
        bob, carol = self.users["bob"], self.users["carol"]
        self.ok(await bob.client.sync(timeout=300, sync_filter=bob.filter_id), "empty long poll")
        self.ok(await bob.client.sync(timeout=300, sync_filter=bob.filter_id), "empty long poll")
        # The sync's `since` predates the send, so it returns the message
        # whichever of the two reaches the server first.
        general = self.rooms["general"]
        polled, _ = await asyncio.gather(
            bob.client.sync(timeout=10_000, sync_filter=bob.filter_id),
            self.send(general, carol, "m.room.message", {"msgtype": "m.text", "body": self.text.line()}),
        )
        self.ok(polled, "woken long poll")
        # An inline (URL-encoded JSON) filter, as nio sends a dict filter.
        self.ok(
            await carol.client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 5}}, "presence": {"not_types": ["m.presence"]}}),
            "inline filter sync",
        )

    async def history(self) -> None:
        self.progress("history and room views")
        alice, bob = self.users["alice"], self.users["bob"]
        general = self.rooms["general"]
        back = self.ok(
            await alice.client.room_messages(general.room_id, start="", limit=20, direction=MessageDirection.back),
            "messages backwards",
        )
        page = self.ok(
            await alice.client.room_messages(general.room_id, start=back.end, limit=20, direction=MessageDirection.back),
            "messages, next page",
        )
        self.ok(
            await alice.client.room_messages(general.room_id, start=page.end, limit=15, direction=MessageDirection.front),
            "messages forwards",
        )
        self.ok(
            await alice.client.room_messages(
                general.room_id, start="", limit=10, message_filter={"types": ["m.room.message"], "lazy_load_members": True}
            ),
            "filtered messages",
        )
        middle, _ = general.events[len(general.events) // 2]
        self.ok(await bob.client.room_context(general.room_id, middle, limit=6), "context")
        self.ok(await bob.client.room_get_event(general.room_id, middle), "get event")
        await self.raw(bob, "GET", ["rooms", general.room_id, "members"], query={"membership": "join"})
        await self.raw(bob, "GET", ["rooms", general.room_id, "members"])
        self.ok(await bob.client.joined_members(general.room_id), "joined members")
        self.ok(await bob.client.joined_rooms(), "joined rooms")
        self.ok(await bob.client.room_get_state(self.rooms["project"].room_id), "room state")
        self.ok(await bob.client.room_get_state_event(general.room_id, "m.room.name"), "room name")
        if general.thread_roots:
            root = general.thread_roots[0]
            await self.raw(bob, "GET", ["rooms", general.room_id, "relations", root], query={"limit": 20}, base=V1)
            await self.raw(bob, "GET", ["rooms", general.room_id, "relations", root, "m.thread"], base=V1)
        await self.raw(bob, "GET", ["rooms", general.room_id, "threads"], query={"include": "all", "limit": 10}, base=V1)
        for room in self.rooms.values():
            member = self.users[room.members[0]]
            self.ok(await member.client.room_messages(room.room_id, start="", limit=30), "messages")

    async def membership_changes(self) -> None:
        self.progress("membership changes")
        alice, bob, carol, dave = (self.users[n] for n in ("alice", "bob", "carol", "dave"))
        general = self.rooms["general"]
        # A scratch room for leave/forget, ban/unban and knocking.
        created = self.ok(
            await dave.client.room_create(name="Scratch", preset=RoomPreset.private_chat, invite=[alice.user_id, bob.user_id]),
            "create scratch",
        )
        scratch = created.room_id
        self.ok(await alice.client.join(scratch), "join scratch")
        self.ok(await bob.client.join(scratch), "join scratch")
        self.ok(await dave.client.room_ban(scratch, bob.user_id, "testing bans"), "ban")
        self.ok(await dave.client.room_unban(scratch, bob.user_id), "unban")
        self.ok(await alice.client.room_leave(scratch), "leave")
        self.ok(await alice.client.room_forget(scratch), "forget")
        await self.raw(dave, "PUT", ["rooms", scratch, "state", "m.room.join_rules", ""], body={"join_rule": "knock"})
        self.ok(await carol.client.room_knock(scratch, "can I join?"), "knock")
        await self.raw(dave, "POST", ["rooms", scratch, "invite"], body={"user_id": carol.user_id, "reason": "welcome"})
        self.ok(await carol.client.join(scratch), "join after knock")

        self.ok(await alice.client.room_kick(general.room_id, dave.user_id, "please read the rules"), "kick")
        general.members.remove("dave")
        self.ok(await dave.client.join(general.room_id), "rejoin")
        general.members.append("dave")
        self.ok(await alice.client.room_ban(general.room_id, dave.user_id, "cool down"), "ban")
        general.members.remove("dave")
        self.ok(await alice.client.room_unban(general.room_id, dave.user_id), "unban")
        self.ok(await alice.client.room_invite(general.room_id, dave.user_id), "reinvite")
        self.ok(await dave.client.join(general.room_id), "join after unban")
        general.members.append("dave")
        self.ok(await dave.client.room_leave(self.rooms["night"].room_id), "leave night")
        self.rooms["night"].members.remove("dave")
        for user in self.users.values():
            self.ok(await user.client.sync(timeout=0, sync_filter=user.filter_id), "sync after membership")

    async def account_state(self) -> None:
        self.progress("presence, account data, devices")
        alice, bob, carol = self.users["alice"], self.users["bob"], self.users["carol"]
        general = self.rooms["general"]
        for user, state, status in ((alice, "online", "On the hill with the antenna"), (bob, "unavailable", None), (carol, "online", "☕")):
            self.ok(await user.client.set_presence(state, status), "set presence")
        for user in (alice, carol):
            self.ok(await bob.client.get_presence(user.user_id), "get presence")

        await self.raw(alice, "PUT", ["user", alice.user_id, "account_data", "io.element.recent_emoji"],
                       body={"recent_emoji": [[e, self.rng.randint(1, 9)] for e in _REACTION_KEYS[:4]]})
        await self.raw(alice, "GET", ["user", alice.user_id, "account_data", "m.direct"])
        await self.raw(alice, "PUT", ["user", alice.user_id, "rooms", general.room_id, "account_data", "org.example.draft"],
                       body={"body": self.text.line()})
        await self.raw(alice, "GET", ["user", alice.user_id, "rooms", general.room_id, "account_data", "org.example.draft"])
        await self.raw(alice, "PUT", ["user", alice.user_id, "rooms", general.room_id, "tags", "m.favourite"], body={"order": 0.25})
        await self.raw(alice, "GET", ["user", alice.user_id, "rooms", general.room_id, "tags"])
        last, _ = general.events[-1]
        await self.raw(alice, "POST", ["rooms", general.room_id, "read_markers"],
                       body={"m.fully_read": last, "m.read": last, "m.read.private": last})
        await self.raw(alice, "GET", ["user", alice.user_id, "rooms", general.room_id, "account_data", "m.fully_read"])

        devices = self.ok(await alice.client.devices(), "devices")
        self.ok(await alice.client.update_device(alice.device_id, {"display_name": "Alice's field laptop"}), "rename device")
        await self.raw(alice, "GET", ["devices", alice.device_id])
        other = sorted(d.id for d in devices.devices if d.id != alice.device_id)
        # Deleting a device needs user-interactive auth: 401 with flows, then password.
        uia = await self.raw(alice, "POST", ["delete_devices"], body={"devices": other}, expect=401)
        self.ok(
            await alice.client.delete_devices(
                other,
                {"type": "m.login.password", "session": uia["session"],
                 "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password},
            ),
            "delete devices",
        )
        await self.raw(alice, "POST", ["user", alice.user_id, "openid", "request_token"], body={})

    async def directories(self) -> None:
        self.progress("directories")
        bob, carol, dave = self.users["bob"], self.users["carol"], self.users["dave"]
        general = self.rooms["general"]
        self.ok(await dave.client.list_public_rooms(limit=10), "public rooms")
        await self.raw(dave, "POST", ["publicRooms"], body={"limit": 5, "filter": {"generic_search_term": "general"}})
        self.ok(await dave.client.room_resolve_alias(self.general_alias), "resolve alias")
        self.ok(await dave.client.room_get_visibility(general.room_id), "visibility")
        project = self.rooms["project"]
        alias = f"#antenna-{self.suffix}:{self.server_name}"
        self.ok(await bob.client.room_put_alias(alias, project.room_id), "put alias")
        await self.raw(bob, "PUT", ["rooms", project.room_id, "state", "m.room.canonical_alias", ""], body={"alias": alias})
        await self.raw(bob, "GET", ["rooms", project.room_id, "aliases"])
        await self.raw(bob, "PUT", ["directory", "list", "room", project.room_id], body={"visibility": "private"})
        for term in ("car", "ali", "nobody-here"):
            await self.raw(carol, "POST", ["user_directory", "search"], body={"search_term": term, "limit": 10})

    async def encryption_traffic(self) -> None:
        self.progress("E2EE keys and to-device")
        alice, bob, carol = self.users["alice"], self.users["bob"], self.users["carol"]
        before = alice.client.next_batch
        await self.raw(alice, "POST", ["keys", "query"],
                       body={"device_keys": {bob.user_id: [], carol.user_id: []}, "timeout": 10000})
        claimed = await self.raw(alice, "POST", ["keys", "claim"],
                                 body={"one_time_keys": {carol.user_id: {carol.device_id: "signed_curve25519"}}, "timeout": 10000})
        if not claimed["one_time_keys"].get(carol.user_id):
            raise WorkloadError(f"keys/claim returned no key: {claimed}")
        # Olm-encrypted room key to carol, a key request, a verification request.
        olm = {
            "algorithm": "m.olm.v1.curve25519-aes-sha2",
            "sender_key": alice.curve25519,
            "ciphertext": {carol.curve25519: {"type": 0, "body": self.random_b64(self.rng.randint(380, 460))}},
        }
        await self.raw(alice, "PUT", ["sendToDevice", "m.room.encrypted", self.txn()],
                       body={"messages": {carol.user_id: {carol.device_id: olm}}})
        await self.raw(bob, "PUT", ["sendToDevice", "m.room_key_request", self.txn()],
                       body={"messages": {alice.user_id: {"*": {
                           "action": "request", "requesting_device_id": bob.device_id, "request_id": self.random_b64(9),
                           "body": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": self.rooms["night"].room_id,
                                    "sender_key": carol.curve25519, "session_id": self.random_b64(32)}}}}})
        await self.raw(carol, "PUT", ["sendToDevice", "m.key.verification.request", self.txn()],
                       body={"messages": {alice.user_id: {alice.device_id: {
                           "from_device": carol.device_id, "methods": ["m.sas.v1"], "transaction_id": self.random_b64(12),
                           "timestamp": 1_700_000_000_000 + self.rng.randrange(10**9)}}}})
        self.ok(await carol.client.sync(timeout=0, sync_filter=carol.filter_id), "sync to-device")
        self.ok(await alice.client.sync(timeout=0, sync_filter=alice.filter_id), "sync to-device")
        await self.raw(alice, "GET", ["keys", "changes"], query={"from": before, "to": alice.client.next_batch})
        # Server-side key backup, as Element sets it up.
        version = await self.raw(alice, "POST", ["room_keys", "version"], body={
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": self.random_b64(32),
                          "signatures": {alice.user_id: {f"ed25519:{alice.device_id}": self.random_b64(64)}}},
        })
        sessions = {
            self.random_b64(32): {
                "first_message_index": 0, "forwarded_count": 0, "is_verified": True,
                "session_data": {"ephemeral": self.random_b64(32), "ciphertext": self.random_b64(240), "mac": self.random_b64(8)},
            }
            for _ in range(2)
        }
        await self.raw(alice, "PUT", ["room_keys", "keys"], query={"version": version["version"]},
                       body={"rooms": {self.rooms["dm"].room_id: {"sessions": sessions}}})
        await self.raw(alice, "GET", ["room_keys", "version"])
        await self.raw(bob, "POST", ["keys", "query"], body={"device_keys": {alice.user_id: [alice.device_id]}})

    async def push_and_notifications(self) -> None:
        self.progress("push rules and notifications")
        alice = self.users["alice"]
        rule = {"actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}],
                "pattern": "antenna"}
        await self.raw(alice, "PUT", ["pushrules", "global", "content", "antenna"], body=rule)
        await self.raw(alice, "PUT", ["pushrules", "global", "override", "mute-night"], body={
            "actions": [], "conditions": [{"kind": "event_match", "key": "room_id", "pattern": self.rooms["night"].room_id}]})
        await self.raw(alice, "PUT", ["pushrules", "global", "override", "mute-night", "enabled"], body={"enabled": False})
        await self.raw(alice, "GET", ["pushrules", "global", "content", "antenna"])
        await self.raw(alice, "DELETE", ["pushrules", "global", "override", "mute-night"])
        await self.raw(alice, "GET", ["notifications"], query={"limit": 10})
        await self.raw(alice, "GET", ["notifications"], query={"limit": 5, "only": "highlight"})
        await self.raw(alice, "GET", ["pushers"])

    async def federation_view(self, *, initial: bool) -> None:
        """Syncs with event_format=federation: events as servers see them."""
        self.progress("federation-format sync")
        carol = self.users["carol"]
        if initial:
            uploaded = await self.raw(carol, "POST", ["user", carol.user_id, "filter"], body=FEDERATION_FILTER)
            self.federation_filter = uploaded["filter_id"]
            reply = await self.raw(carol, "GET", ["sync"], query={"filter": self.federation_filter, "timeout": 0})
            self.federation_since = reply["next_batch"]
            return
        # Incremental: the conversation since the initial one, signed.
        await self.raw(carol, "GET", ["sync"], query={"filter": self.federation_filter, "since": self.federation_since, "timeout": 0})
        await self.raw(carol, "GET", ["sync"], query={"filter": self.federation_filter, "timeout": 0, "full_state": "true"})

    async def errors(self) -> None:
        self.progress("errors")
        bob, carol = self.users["bob"], self.users["carol"]
        general, dm = self.rooms["general"], self.rooms["dm"]
        text = {"msgtype": "m.text", "body": "hello?"}
        # 403: not in the room; not enough power.
        self.fails(await bob.client.room_send(dm.room_id, "m.room.message", text, tx_id=self.txn()), "M_FORBIDDEN", "send outside")
        self.fails(await carol.client.room_put_state(general.room_id, "m.room.name", {"name": "Carol's"}), "M_FORBIDDEN", "no power")
        # 404: unknown event, alias, profile, endpoint; 405 known path, wrong method.
        unknown_event = "$" + _b64(self.rng.randbytes(32)).replace("+", "-").replace("/", "_")
        self.fails(await bob.client.room_get_event(general.room_id, unknown_event), "M_NOT_FOUND", "unknown event")
        self.fails(await bob.client.room_resolve_alias(f"#no-such-room:{self.server_name}"), "M_NOT_FOUND", "unknown alias")
        # (Synapse says M_UNKNOWN "No row found" here, with a 404.)
        await self.raw(bob, "GET", ["profile", f"@nobody-{self.suffix}:{self.server_name}"], expect=404)
        await self.raw(bob, "GET", "/_matrix/client/v3/no/such/endpoint", expect=404)
        await self.raw(bob, "DELETE", ["account", "whoami"], expect=405)
        # 400: broken JSON, wrong JSON, bad parameters.
        await self.raw(bob, "PUT", ["rooms", general.room_id, "send", "m.room.message", self.txn()],
                       data=b'{"msgtype": "m.text", "body": "half a mess', expect=400)
        await self.raw(bob, "POST", ["rooms", general.room_id, "invite"], body={}, expect=400)
        await self.raw(bob, "GET", ["rooms", general.room_id, "messages"], query={"dir": "sideways"}, expect=400)
        self.fails(await bob.client.join(f"#gone-{self.suffix}:{self.server_name}"), "M_NOT_FOUND", "join unknown alias")
        # 409: alias taken.
        await self.raw(bob, "PUT", ["directory", "room", self.general_alias], body={"room_id": general.room_id}, expect=409)
        # 413: an event over 64 KiB.
        big = {"msgtype": "m.text", "body": self.text.sentence(8) * 2000}
        await self.raw(bob, "PUT", ["rooms", general.room_id, "send", "m.room.message", self.txn()], body=big, expect=413)
        # 401: unknown token, missing token.
        self.fails(await self.new_client_with_token("syt_bm90YXRva2Vu_bogus_0000").whoami(), "M_UNKNOWN_TOKEN", "bad token")
        await self.raw(None, "GET", ["joined_rooms"], expect=401)

    def new_client_with_token(self, token: str) -> AsyncClient:
        client = self.new_client()
        client.access_token = token
        return client

    async def rate_limit(self) -> None:
        """A real 429 on a send, then the retry after Retry-After."""
        if self.limit_user is None:
            self.progress("rate limit: skipped (no limit_user)")
            return
        self.progress("rate limit")
        name = f"floodbot-{self.suffix}"
        bot = self.new_client()
        registered = self.ok(await bot.register(name, f"{name}-password", "bot"), "register bot")
        general = self.rooms["general"]
        self.ok(await bot.join(general.room_id), "bot joins")
        await self.limit_user(registered.user_id)
        limited = None
        for n in range(5):
            content = {"msgtype": "m.notice", "body": f"Beacon {n + 1}: battery {90 - n}%, SNR {self.rng.randint(-12, 9)} dB"}
            txn = self.txn()
            response = await bot.room_send(general.room_id, "m.room.message", content, tx_id=txn)
            if isinstance(response, ErrorResponse):
                if response.status_code != "M_LIMIT_EXCEEDED":
                    raise WorkloadError(f"flood: {response}")
                limited = (response, content, txn)
                break
        if limited is None:
            raise WorkloadError("five quick sends from a rate-limited user gave no 429")
        response, content, txn = limited
        # Retry with the same transaction ID once the server's wait has passed.
        await asyncio.sleep((response.retry_after_ms or 1000) / 1000)
        self.ok(await bot.room_send(general.room_id, "m.room.message", content, tx_id=txn), "retry after 429")

    async def sign_out(self) -> None:
        self.progress("logout")
        dave = self.users["dave"]
        old_token = dave.token
        self.ok(await dave.client.logout(), "logout")
        self.fails(await self.new_client_with_token(old_token).whoami(), "M_UNKNOWN_TOKEN", "token after logout")


async def run_workload(
    base_url: str,
    *,
    seed: int = 1,
    scale: int = 1,
    progress: Callable[[str], None] | None = None,
    limit_user: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Play the scripted workload against the homeserver (or proxy) at base_url.

    ``scale`` multiplies the chat rounds.  ``limit_user(user_id)``, if given,
    must make the homeserver rate-limit that user's sends (about one per
    second); the workload then checks it gets a 429 and retries properly.
    """
    await Workload(base_url, seed, scale, progress, limit_user).run()
