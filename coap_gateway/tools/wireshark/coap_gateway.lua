-- coap_gateway.lua: Wireshark dissector for coap-gateway's secure link
-- (docs/protocol.md Part III; how to use it: docs/wireshark.md).
--
--   tshark -X lua_script:coap_gateway.lua -o cgw.keylog:capture.keylog -r capture.pcap
--   or copy this file to ~/.local/lib/wireshark/plugins/ and set
--   Preferences > Protocols > CGW > Key log file.
--
-- It recognises the project's UDP datagrams (the CoAP port 5683 and the
-- federation gateways' 5684 by default, and a heuristic for handshakes on
-- other ports), names the handshake frames
-- (IK1, IK2, XX1-3, RESET, REFUSE, WAKE) with their fields, and, given the key log a
-- gateway writes with --keylog (COAP_GATEWAY_KEYLOG), decrypts the sealed
-- frames and hands the CoAP message inside to Wireshark's own CoAP dissector.
-- Requests get their route (the Route option or the route code of Uri-Path)
-- and the project's private options by name.
--
-- Cryptography: Wireshark's Lua API has no crypto binding, so ChaCha20 and
-- Poly1305 below are written by hand in plain Lua (after RFC 8439 and
-- TweetNaCl's poly1305).  Data frames are decrypted and their Poly1305 tag is
-- CHECKED: a frame is shown as decrypted only when the tag verifies, which is
-- also how a frame is matched to its session (and its piggybacked answer to
-- the request counter) when the addresses alone do not tell.  Handshake
-- payloads (IK1, IK2, XX3) are decrypted WITHOUT checking their tag (its
-- associated data is the Noise handshake hash, which is not in the key log);
-- they are matched by the client's ephemeral key, which is in the clear.
-- Rekeying is followed here: epoch e of a direction uses REKEY^e(k), epoch =
-- counter // rekey (the interval the key log line gives).

local proto = Proto("cgw", "coap-gateway secure link")

-- ---------------------------------------------------------------- bit ops
-- Lua 5.2 (Wireshark <= 4.2) has bit32; Lua 5.3/5.4 have native operators
-- (loaded from a string, so that this file still parses under 5.2).
local bit = bit32
if bit == nil then
    bit = load([[
        local M = {}
        function M.band(a, b) return a & b end
        function M.bor(a, b) return a | b end
        function M.bxor(a, b) return a ~ b end
        function M.rshift(a, n) return (a & 0xffffffff) >> n end
        function M.lshift(a, n) return (a << n) & 0xffffffff end
        function M.lrotate(a, n) a = a & 0xffffffff; return ((a << n) | (a >> (32 - n))) & 0xffffffff end
        return M
    ]])()
end
local band, bor, bxor, rshift, lrot = bit.band, bit.bor, bit.bxor, bit.rshift, bit.lrotate
local floor = math.floor
local TWO32 = 4294967296

-- ---------------------------------------------------------------- ChaCha20 (RFC 8439)

local function words_le(s, count)
    local w = {}
    for i = 0, count - 1 do
        local a, b, c, d = s:byte(4 * i + 1, 4 * i + 4)
        w[i + 1] = a + b * 256 + c * 65536 + d * 16777216
    end
    return w
end

local function quarter(x, a, b, c, d)
    x[a] = (x[a] + x[b]) % TWO32; x[d] = lrot(bxor(x[d], x[a]), 16)
    x[c] = (x[c] + x[d]) % TWO32; x[b] = lrot(bxor(x[b], x[c]), 12)
    x[a] = (x[a] + x[b]) % TWO32; x[d] = lrot(bxor(x[d], x[a]), 8)
    x[c] = (x[c] + x[d]) % TWO32; x[b] = lrot(bxor(x[b], x[c]), 7)
end

-- one 64-byte keystream block; nonce = 32 zero bits + the 64-bit Noise nonce
-- (little-endian), given as its low and high 32-bit words
local function chacha_block(key_words, counter, nonce_lo, nonce_hi)
    local s = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574}
    for i = 1, 8 do s[4 + i] = key_words[i] end
    s[13], s[14], s[15], s[16] = counter, 0, nonce_lo, nonce_hi
    local x = {}
    for i = 1, 16 do x[i] = s[i] end
    for _ = 1, 10 do
        quarter(x, 1, 5, 9, 13); quarter(x, 2, 6, 10, 14); quarter(x, 3, 7, 11, 15); quarter(x, 4, 8, 12, 16)
        quarter(x, 1, 6, 11, 16); quarter(x, 2, 7, 12, 13); quarter(x, 3, 8, 9, 14); quarter(x, 4, 5, 10, 15)
    end
    local out = {}
    for i = 1, 16 do
        local v = (x[i] + s[i]) % TWO32
        out[i] = string.char(v % 256, floor(v / 256) % 256, floor(v / 65536) % 256, floor(v / 16777216))
    end
    return table.concat(out)
end

local function chacha_xor(key, nonce_lo, nonce_hi, data)
    local kw = words_le(key, 8)
    local out, counter, pos = {}, 1, 1  -- ChaChaPoly encrypts from block counter 1
    while pos <= #data do
        local block = chacha_block(kw, counter, nonce_lo, nonce_hi)
        local chunk = data:sub(pos, pos + 63)
        local bytes = {}
        for i = 1, #chunk do bytes[i] = string.char(bxor(chunk:byte(i), block:byte(i))) end
        out[#out + 1] = table.concat(bytes)
        pos, counter = pos + 64, counter + 1
    end
    return table.concat(out)
end

-- ---------------------------------------------------------------- Poly1305 (TweetNaCl's, 17 limbs of 8 bits)

local MINUSP = {5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 252}

local function add1305(h, c)
    local u = 0
    for j = 1, 17 do
        u = u + h[j] + c[j]
        h[j] = u % 256
        u = floor(u / 256)
    end
end

local function poly1305(msg, key)
    local r, h = {}, {}
    for j = 1, 17 do r[j], h[j] = 0, 0 end
    for j = 1, 16 do r[j] = key:byte(j) end
    r[4] = r[4] % 16; r[5] = r[5] - r[5] % 4; r[8] = r[8] % 16; r[9] = r[9] - r[9] % 4
    r[12] = r[12] % 16; r[13] = r[13] - r[13] % 4; r[16] = r[16] % 16
    local n, pos = #msg, 1
    while n > 0 do
        local c = {}
        for j = 1, 17 do c[j] = 0 end
        local take = math.min(16, n)
        for j = 1, take do c[j] = msg:byte(pos + j - 1) end
        c[take + 1] = 1
        pos, n = pos + take, n - take
        add1305(h, c)
        local x = {}
        for i = 1, 17 do
            local sum = 0
            for j = 1, 17 do
                if j <= i then sum = sum + h[j] * r[i - j + 1]
                else sum = sum + h[j] * 320 * r[i + 17 - j + 1] end
            end
            x[i] = sum
        end
        for i = 1, 17 do h[i] = x[i] end
        local u = 0
        for j = 1, 16 do u = u + h[j]; h[j] = u % 256; u = floor(u / 256) end
        u = u + h[17]; h[17] = u % 4
        u = 5 * floor(u / 4)
        for j = 1, 16 do u = u + h[j]; h[j] = u % 256; u = floor(u / 256) end
        u = u + h[17]; h[17] = u
    end
    local g = {}
    for j = 1, 17 do g[j] = h[j] end
    add1305(h, MINUSP)
    if h[17] >= 128 then for j = 1, 17 do h[j] = g[j] end end  -- h - p < 0: keep h
    local c = {}
    for j = 1, 16 do c[j] = key:byte(16 + j) end
    c[17] = 0
    add1305(h, c)
    local out = {}
    for j = 1, 16 do out[j] = string.char(h[j]) end
    return table.concat(out)
end

local function le64(n)
    local t = {}
    for i = 1, 8 do t[i] = string.char(n % 256); n = floor(n / 256) end
    return table.concat(t)
end

local function pad16(s)
    local r = #s % 16
    return r == 0 and "" or string.rep("\0", 16 - r)
end

-- ChaChaPoly decryption as Noise uses it: the plaintext, or nil when the tag does not verify
local function aead_open(key, nonce_lo, nonce_hi, ad, sealed)
    if #sealed < 16 then return nil end
    local ct, tag = sealed:sub(1, -17), sealed:sub(-16)
    local poly_key = chacha_block(words_le(key, 8), 0, nonce_lo, nonce_hi):sub(1, 32)
    local mac = poly1305(ad .. pad16(ad) .. ct .. pad16(ct) .. le64(#ad) .. le64(#ct), poly_key)
    if mac ~= tag then return nil end
    return chacha_xor(key, nonce_lo, nonce_hi, ct)
end

-- Noise REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64 - 1, "", 32 zero bytes)
local function rekey(key)
    return chacha_xor(key, 0xffffffff, 0xffffffff, string.rep("\0", 32))
end

-- ---------------------------------------------------------------- tables from the profiles

-- BEGIN GENERATED TABLES (python -m coap_gateway.tools.wireshark; do not edit by hand)
local PROFILES = {
  [1] = {name = "msc3079", routes = 1, cbor = 1, schemas = nil},
  [2] = {name = "lb2", routes = 2, cbor = 2, schemas = nil},
  [3] = {name = "lb3", routes = 2, cbor = 2, schemas = 1},
  [4] = {name = "lb4", routes = 2, cbor = 2, schemas = 1},
}
local ROUTES = {
  [1] = {
    [48] = {"client.versions", "/_matrix/client/versions"},
    [49] = {"client.r0.login", "/_matrix/client/r0/login"},
    [50] = {"client.r0.capabilities", "/_matrix/client/r0/capabilities"},
    [51] = {"client.r0.logout", "/_matrix/client/r0/logout"},
    [52] = {"client.r0.register", "/_matrix/client/r0/register"},
    [53] = {"client.r0.filter_create", "/_matrix/client/r0/user/{userId}/filter"},
    [54] = {"client.r0.filter_get", "/_matrix/client/r0/user/{userId}/filter/{filterId}"},
    [55] = {"client.r0.sync", "/_matrix/client/r0/sync"},
    [56] = {"client.r0.state_event", "/_matrix/client/r0/rooms/{roomId}/state/{eventType}/{stateKey}"},
    [57] = {"client.r0.send", "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}"},
    [65] = {"client.r0.event", "/_matrix/client/r0/rooms/{roomId}/event/{eventId}"},
    [66] = {"client.r0.room_state", "/_matrix/client/r0/rooms/{roomId}/state"},
    [67] = {"client.r0.members", "/_matrix/client/r0/rooms/{roomId}/members"},
    [68] = {"client.r0.joined_members", "/_matrix/client/r0/rooms/{roomId}/joined_members"},
    [69] = {"client.r0.messages", "/_matrix/client/r0/rooms/{roomId}/messages"},
    [70] = {"client.r0.redact", "/_matrix/client/r0/rooms/{roomId}/redact/{eventId}/{txnId}"},
    [71] = {"client.r0.create_room", "/_matrix/client/r0/createRoom"},
    [72] = {"client.r0.directory_room", "/_matrix/client/r0/directory/room/{roomAlias}"},
    [73] = {"client.r0.joined_rooms", "/_matrix/client/r0/joined_rooms"},
    [74] = {"client.r0.invite", "/_matrix/client/r0/rooms/{roomId}/invite"},
    [75] = {"client.r0.room_join", "/_matrix/client/r0/rooms/{roomId}/join"},
    [76] = {"client.r0.join", "/_matrix/client/r0/join/{roomIdOrAlias}"},
    [77] = {"client.r0.leave", "/_matrix/client/r0/rooms/{roomId}/leave"},
    [78] = {"client.r0.forget", "/_matrix/client/r0/rooms/{roomId}/forget"},
    [79] = {"client.r0.kick", "/_matrix/client/r0/rooms/{roomId}/kick"},
    [80] = {"client.r0.ban", "/_matrix/client/r0/rooms/{roomId}/ban"},
    [81] = {"client.r0.unban", "/_matrix/client/r0/rooms/{roomId}/unban"},
    [82] = {"client.r0.directory_list_room", "/_matrix/client/r0/directory/list/room/{roomId}"},
    [83] = {"client.r0.public_rooms", "/_matrix/client/r0/publicRooms"},
    [84] = {"client.r0.user_directory_search", "/_matrix/client/r0/user_directory/search"},
    [85] = {"client.r0.profile_displayname", "/_matrix/client/r0/profile/{userId}/displayname"},
    [86] = {"client.r0.profile_avatar_url", "/_matrix/client/r0/profile/{userId}/avatar_url"},
    [87] = {"client.r0.profile", "/_matrix/client/r0/profile/{userId}"},
    [88] = {"client.r0.voip_turn_server", "/_matrix/client/r0/voip/turnServer"},
    [89] = {"client.r0.typing", "/_matrix/client/r0/rooms/{roomId}/typing/{userId}"},
    [90] = {"client.r0.receipt", "/_matrix/client/r0/rooms/{roomId}/receipt/{receiptType}/{eventId}"},
    [97] = {"client.r0.read_markers", "/_matrix/client/r0/rooms/{roomId}/read_markers"},
    [98] = {"client.r0.presence", "/_matrix/client/r0/presence/{userId}/status"},
    [99] = {"client.r0.send_to_device", "/_matrix/client/r0/sendToDevice/{eventType}/{txnId}"},
    [100] = {"client.r0.devices", "/_matrix/client/r0/devices"},
    [101] = {"client.r0.device", "/_matrix/client/r0/devices/{deviceId}"},
    [102] = {"client.r0.delete_devices", "/_matrix/client/r0/delete_devices"},
    [103] = {"client.r0.keys_upload", "/_matrix/client/r0/keys/upload"},
    [104] = {"client.r0.keys_query", "/_matrix/client/r0/keys/query"},
    [105] = {"client.r0.keys_claim", "/_matrix/client/r0/keys/claim"},
    [106] = {"client.r0.keys_changes", "/_matrix/client/r0/keys/changes"},
    [107] = {"client.r0.pushers", "/_matrix/client/r0/pushers"},
    [108] = {"client.r0.pushers_set", "/_matrix/client/r0/pushers/set"},
    [109] = {"client.r0.notifications", "/_matrix/client/r0/notifications"},
    [110] = {"client.r0.pushrules", "/_matrix/client/r0/pushrules/"},
    [111] = {"client.r0.search", "/_matrix/client/r0/search"},
    [112] = {"client.r0.tags", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags"},
    [113] = {"client.r0.tag", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags/{tag}"},
    [114] = {"client.r0.account_data", "/_matrix/client/r0/user/{userId}/account_data/{type}"},
    [115] = {"client.r0.room_account_data", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/account_data/{type}"},
    [116] = {"client.r0.context", "/_matrix/client/r0/rooms/{roomId}/context/{eventId}"},
    [117] = {"client.r0.report_event", "/_matrix/client/r0/rooms/{roomId}/report/{eventId}"},
  },
  [2] = {
    [0] = {"client.pushers_set", "/_matrix/client/v3/pushers/set"},
    [1] = {"client.search", "/_matrix/client/v3/search"},
    [2] = {"client.delete_devices", "/_matrix/client/v3/delete_devices"},
    [3] = {"client.register", "/_matrix/client/v3/register"},
    [4] = {"client.keys_device_signing_upload", "/_matrix/client/v3/keys/device_signing/upload"},
    [5] = {"client.keys_signatures_upload", "/_matrix/client/v3/keys/signatures/upload"},
    [6] = {"client.unstable.dehydrated_device", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"},
    [7] = {"client.unstable.dehydrated_device_events", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events"},
    [8] = {"client.v1.auth_metadata", "/_matrix/client/v1/auth_metadata"},
    [9] = {"client.unstable.auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"},
    [10] = {"client.kick", "/_matrix/client/v3/rooms/{roomId}/kick"},
    [11] = {"client.ban", "/_matrix/client/v3/rooms/{roomId}/ban"},
    [12] = {"client.unban", "/_matrix/client/v3/rooms/{roomId}/unban"},
    [13] = {"client.forget", "/_matrix/client/v3/rooms/{roomId}/forget"},
    [14] = {"client.knock", "/_matrix/client/v3/knock/{roomIdOrAlias}"},
    [15] = {"client.report_event", "/_matrix/client/v3/rooms/{roomId}/report/{eventId}"},
    [16] = {"client.v1.room_summary", "/_matrix/client/v1/room_summary/{roomIdOrAlias}"},
    [17] = {"client.room_keys_version_id", "/_matrix/client/v3/room_keys/version/{version}"},
    [18] = {"client.room_keys_room", "/_matrix/client/v3/room_keys/keys/{roomId}"},
    [19] = {"client.v1.media_preview_url", "/_matrix/client/v1/media/preview_url"},
    [20] = {"client.v1.timestamp_to_event", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event"},
    [21] = {"client.unstable.delayed_event", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}"},
    [22] = {"client.unstable.delayed_event_restart", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/restart"},
    [23] = {"client.refresh", "/_matrix/client/v3/refresh"},
    [24] = {"client.r0.sync", "/_matrix/client/r0/sync"},
    [25] = {"client.r0.send", "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}"},
    [26] = {"client.r0.state_event", "/_matrix/client/r0/rooms/{roomId}/state/{eventType}/{stateKey}"},
    [27] = {"client.r0.messages", "/_matrix/client/r0/rooms/{roomId}/messages"},
    [28] = {"client.r0.receipt", "/_matrix/client/r0/rooms/{roomId}/receipt/{receiptType}/{eventId}"},
    [29] = {"client.r0.typing", "/_matrix/client/r0/rooms/{roomId}/typing/{userId}"},
    [30] = {"client.r0.read_markers", "/_matrix/client/r0/rooms/{roomId}/read_markers"},
    [31] = {"client.r0.keys_query", "/_matrix/client/r0/keys/query"},
    [32] = {"client.r0.keys_upload", "/_matrix/client/r0/keys/upload"},
    [33] = {"client.send", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"},
    [34] = {"client.sync", "/_matrix/client/v3/sync"},
    [35] = {"client.state_event", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"},
    [36] = {"client.messages", "/_matrix/client/v3/rooms/{roomId}/messages"},
    [37] = {"client.receipt", "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"},
    [38] = {"client.typing", "/_matrix/client/v3/rooms/{roomId}/typing/{userId}"},
    [39] = {"client.read_markers", "/_matrix/client/v3/rooms/{roomId}/read_markers"},
    [40] = {"client.keys_query", "/_matrix/client/v3/keys/query"},
    [41] = {"client.keys_upload", "/_matrix/client/v3/keys/upload"},
    [42] = {"client.keys_claim", "/_matrix/client/v3/keys/claim"},
    [43] = {"client.send_to_device", "/_matrix/client/v3/sendToDevice/{eventType}/{txnId}"},
    [44] = {"client.versions", "/_matrix/client/versions"},
    [45] = {"client.login", "/_matrix/client/v3/login"},
    [46] = {"federation.v1.send", "/_matrix/federation/v1/send/{txnId}"},
    [47] = {"client.v1.media_download", "/_matrix/client/v1/media/download/{serverName}/{mediaId}"},
    [48] = {"media.v3.download", "/_matrix/media/v3/download/{serverName}/{mediaId}"},
    [49] = {"client.unstable.simplified_sliding_sync", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"},
    [50] = {"client.v1.media_thumbnail", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"},
    [51] = {"media.v3.thumbnail", "/_matrix/media/v3/thumbnail/{serverName}/{mediaId}"},
    [52] = {"media.v3.upload", "/_matrix/media/v3/upload"},
    [53] = {"client.state_event_nokey", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}"},
    [54] = {"client.room_state", "/_matrix/client/v3/rooms/{roomId}/state"},
    [55] = {"client.event", "/_matrix/client/v3/rooms/{roomId}/event/{eventId}"},
    [56] = {"client.members", "/_matrix/client/v3/rooms/{roomId}/members"},
    [57] = {"client.joined_members", "/_matrix/client/v3/rooms/{roomId}/joined_members"},
    [58] = {"client.context", "/_matrix/client/v3/rooms/{roomId}/context/{eventId}"},
    [59] = {"client.v1.relations", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}"},
    [60] = {"client.v1.relations_type", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}"},
    [61] = {"client.v1.relations_type_event", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"},
    [62] = {"client.v1.threads", "/_matrix/client/v1/rooms/{roomId}/threads"},
    [63] = {"client.redact", "/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"},
    [64] = {"client.presence", "/_matrix/client/v3/presence/{userId}/status"},
    [65] = {"client.account_data", "/_matrix/client/v3/user/{userId}/account_data/{type}"},
    [66] = {"client.room_account_data", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"},
    [67] = {"client.keys_changes", "/_matrix/client/v3/keys/changes"},
    [68] = {"client.capabilities", "/_matrix/client/v3/capabilities"},
    [69] = {"client.whoami", "/_matrix/client/v3/account/whoami"},
    [70] = {"client.filter_create", "/_matrix/client/v3/user/{userId}/filter"},
    [71] = {"client.filter_get", "/_matrix/client/v3/user/{userId}/filter/{filterId}"},
    [72] = {"client.join", "/_matrix/client/v3/join/{roomIdOrAlias}"},
    [73] = {"client.room_join", "/_matrix/client/v3/rooms/{roomId}/join"},
    [74] = {"client.leave", "/_matrix/client/v3/rooms/{roomId}/leave"},
    [75] = {"client.invite", "/_matrix/client/v3/rooms/{roomId}/invite"},
    [76] = {"client.create_room", "/_matrix/client/v3/createRoom"},
    [77] = {"client.profile", "/_matrix/client/v3/profile/{userId}"},
    [78] = {"client.profile_displayname", "/_matrix/client/v3/profile/{userId}/displayname"},
    [79] = {"client.profile_avatar_url", "/_matrix/client/v3/profile/{userId}/avatar_url"},
    [80] = {"client.devices", "/_matrix/client/v3/devices"},
    [81] = {"client.device", "/_matrix/client/v3/devices/{deviceId}"},
    [82] = {"client.pushrules", "/_matrix/client/v3/pushrules/"},
    [83] = {"client.logout", "/_matrix/client/v3/logout"},
    [84] = {"client.joined_rooms", "/_matrix/client/v3/joined_rooms"},
    [85] = {"client.directory_room", "/_matrix/client/v3/directory/room/{roomAlias}"},
    [86] = {"client.public_rooms", "/_matrix/client/v3/publicRooms"},
    [87] = {"client.user_directory_search", "/_matrix/client/v3/user_directory/search"},
    [88] = {"client.voip_turn_server", "/_matrix/client/v3/voip/turnServer"},
    [89] = {"client.room_keys_version", "/_matrix/client/v3/room_keys/version"},
    [90] = {"client.room_keys_keys", "/_matrix/client/v3/room_keys/keys"},
    [91] = {"client.room_keys_room_session", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"},
    [92] = {"client.v1.media_config", "/_matrix/client/v1/media/config"},
    [93] = {"media.v3.download_filename", "/_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}"},
    [94] = {"client.v1.media_download_filename", "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}"},
    [95] = {"client.v1.hierarchy", "/_matrix/client/v1/rooms/{roomId}/hierarchy"},
    [96] = {"wellknown.client", "/.well-known/matrix/client"},
    [97] = {"wellknown.server", "/.well-known/matrix/server"},
    [98] = {"key.v2.server", "/_matrix/key/v2/server"},
    [99] = {"key.v2.query", "/_matrix/key/v2/query"},
    [100] = {"key.v2.query_server", "/_matrix/key/v2/query/{serverName}"},
    [101] = {"federation.v1.event", "/_matrix/federation/v1/event/{eventId}"},
    [102] = {"federation.v1.state_ids", "/_matrix/federation/v1/state_ids/{roomId}"},
    [103] = {"federation.v1.backfill", "/_matrix/federation/v1/backfill/{roomId}"},
    [104] = {"federation.v1.get_missing_events", "/_matrix/federation/v1/get_missing_events/{roomId}"},
    [105] = {"federation.v1.make_join", "/_matrix/federation/v1/make_join/{roomId}/{userId}"},
    [106] = {"federation.v2.send_join", "/_matrix/federation/v2/send_join/{roomId}/{eventId}"},
    [107] = {"federation.v2.invite", "/_matrix/federation/v2/invite/{roomId}/{eventId}"},
    [108] = {"federation.v1.query_profile", "/_matrix/federation/v1/query/profile"},
    [109] = {"federation.v1.query_directory", "/_matrix/federation/v1/query/directory"},
    [110] = {"federation.v1.user_devices", "/_matrix/federation/v1/user/devices/{userId}"},
    [111] = {"federation.v1.user_keys_query", "/_matrix/federation/v1/user/keys/query"},
    [112] = {"federation.v1.user_keys_claim", "/_matrix/federation/v1/user/keys/claim"},
    [113] = {"federation.v1.event_auth", "/_matrix/federation/v1/event_auth/{roomId}/{eventId}"},
    [114] = {"federation.v1.version", "/_matrix/federation/v1/version"},
    [115] = {"federation.v1.media_download", "/_matrix/federation/v1/media/download/{mediaId}"},
    [116] = {"federation.v1.media_thumbnail", "/_matrix/federation/v1/media/thumbnail/{mediaId}"},
    [117] = {"federation.v1.make_leave", "/_matrix/federation/v1/make_leave/{roomId}/{userId}"},
    [118] = {"federation.v2.send_leave", "/_matrix/federation/v2/send_leave/{roomId}/{eventId}"},
    [119] = {"federation.v1.state", "/_matrix/federation/v1/state/{roomId}"},
    [120] = {"federation.v1.hierarchy", "/_matrix/federation/v1/hierarchy/{roomId}"},
    [121] = {"federation.v1.public_rooms", "/_matrix/federation/v1/publicRooms"},
    [122] = {"federation.v1.timestamp_to_event", "/_matrix/federation/v1/timestamp_to_event/{roomId}"},
    [123] = {"client.tags", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"},
    [124] = {"client.tag", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"},
    [125] = {"client.notifications", "/_matrix/client/v3/notifications"},
    [126] = {"client.pushers", "/_matrix/client/v3/pushers"},
    [127] = {"media.r0.download", "/_matrix/media/r0/download/{serverName}/{mediaId}"},
    [128] = {"media.v3.upload_async", "/_matrix/media/v3/upload/{serverName}/{mediaId}"},
    [129] = {"media.v1.create", "/_matrix/media/v1/create"},
    [130] = {"media.v3.config", "/_matrix/media/v3/config"},
    [131] = {"media.v3.preview_url", "/_matrix/media/v3/preview_url"},
    [132] = {"client.unstable.sliding_sync", "/_matrix/client/unstable/org.matrix.msc3575/sync"},
    [133] = {"client.unstable.auth_issuer", "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer"},
    [134] = {"client.v1.login_get_token", "/_matrix/client/v1/login/get_token"},
    [135] = {"client.profile_field", "/_matrix/client/v3/profile/{userId}/{keyName}"},
    [136] = {"client.room_aliases", "/_matrix/client/v3/rooms/{roomId}/aliases"},
    [137] = {"client.directory_list_room", "/_matrix/client/v3/directory/list/room/{roomId}"},
    [138] = {"client.unstable.delayed_events", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"},
    [139] = {"client.unstable.delayed_event_cancel", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/cancel"},
    [140] = {"client.unstable.delayed_event_send", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/send"},
    [141] = {"client.unstable.rtc_transports", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"},
    [142] = {"client.room_upgrade", "/_matrix/client/v3/rooms/{roomId}/upgrade"},
    [143] = {"client.report_room", "/_matrix/client/v3/rooms/{roomId}/report"},
    [144] = {"client.report_user", "/_matrix/client/v3/users/{userId}/report"},
    [145] = {"client.v1.mutual_rooms", "/_matrix/client/v1/mutual_rooms"},
    [146] = {"client.pushrule", "/_matrix/client/v3/pushrules/{scope}/{kind}/{ruleId}"},
    [147] = {"client.pushrule_enabled", "/_matrix/client/v3/pushrules/{scope}/{kind}/{ruleId}/enabled"},
    [148] = {"client.pushrule_actions", "/_matrix/client/v3/pushrules/{scope}/{kind}/{ruleId}/actions"},
    [149] = {"client.pushrules_global", "/_matrix/client/v3/pushrules/global/"},
    [150] = {"client.login_sso_redirect", "/_matrix/client/v3/login/sso/redirect"},
    [151] = {"client.login_sso_redirect_idp", "/_matrix/client/v3/login/sso/redirect/{idpId}"},
    [152] = {"client.logout_all", "/_matrix/client/v3/logout/all"},
    [153] = {"client.auth_fallback", "/_matrix/client/v3/auth/{authType}/fallback/web"},
    [154] = {"client.register_available", "/_matrix/client/v3/register/available"},
    [155] = {"client.v1.register_token_validity", "/_matrix/client/v1/register/m.login.registration_token/validity"},
    [156] = {"client.register_email_token", "/_matrix/client/v3/register/email/requestToken"},
    [157] = {"client.register_msisdn_token", "/_matrix/client/v3/register/msisdn/requestToken"},
    [158] = {"client.account_password", "/_matrix/client/v3/account/password"},
    [159] = {"client.account_password_email_token", "/_matrix/client/v3/account/password/email/requestToken"},
    [160] = {"client.account_password_msisdn_token", "/_matrix/client/v3/account/password/msisdn/requestToken"},
    [161] = {"client.account_deactivate", "/_matrix/client/v3/account/deactivate"},
    [162] = {"client.account_3pid", "/_matrix/client/v3/account/3pid"},
    [163] = {"client.account_3pid_add", "/_matrix/client/v3/account/3pid/add"},
    [164] = {"client.account_3pid_bind", "/_matrix/client/v3/account/3pid/bind"},
    [165] = {"client.account_3pid_delete", "/_matrix/client/v3/account/3pid/delete"},
    [166] = {"client.account_3pid_unbind", "/_matrix/client/v3/account/3pid/unbind"},
    [167] = {"client.account_3pid_email_token", "/_matrix/client/v3/account/3pid/email/requestToken"},
    [168] = {"client.account_3pid_msisdn_token", "/_matrix/client/v3/account/3pid/msisdn/requestToken"},
    [169] = {"client.openid_request_token", "/_matrix/client/v3/user/{userId}/openid/request_token"},
    [170] = {"client.room_initial_sync", "/_matrix/client/v3/rooms/{roomId}/initialSync"},
    [171] = {"client.initial_sync", "/_matrix/client/v3/initialSync"},
    [172] = {"client.events", "/_matrix/client/v3/events"},
    [173] = {"client.events_event", "/_matrix/client/v3/events/{eventId}"},
    [174] = {"client.thirdparty_protocols", "/_matrix/client/v3/thirdparty/protocols"},
    [175] = {"client.thirdparty_protocol", "/_matrix/client/v3/thirdparty/protocol/{protocol}"},
    [176] = {"client.thirdparty_location", "/_matrix/client/v3/thirdparty/location"},
    [177] = {"client.thirdparty_location_protocol", "/_matrix/client/v3/thirdparty/location/{protocol}"},
    [178] = {"client.thirdparty_user", "/_matrix/client/v3/thirdparty/user"},
    [179] = {"client.thirdparty_user_protocol", "/_matrix/client/v3/thirdparty/user/{protocol}"},
    [180] = {"client.directory_list_appservice", "/_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"},
    [181] = {"client.admin_whois", "/_matrix/client/v3/admin/whois/{userId}"},
    [182] = {"client.v1.admin_suspend", "/_matrix/client/v1/admin/suspend/{userId}"},
    [183] = {"client.v1.admin_lock", "/_matrix/client/v1/admin/lock/{userId}"},
    [184] = {"client.v1.appservice_ping", "/_matrix/client/v1/appservice/{appserviceId}/ping"},
    [185] = {"client.unstable.rendezvous_msc4108", "/_matrix/client/unstable/org.matrix.msc4108/rendezvous"},
    [186] = {"client.unstable.rendezvous", "/_matrix/client/unstable/io.element.msc4388/rendezvous"},
    [187] = {"client.unstable.rendezvous_session", "/_matrix/client/unstable/io.element.msc4388/rendezvous/{rendezvousId}"},
    [188] = {"client.unstable.account_data_msc3391", "/_matrix/client/unstable/org.matrix.msc3391/user/{userId}/account_data/{type}"},
    [189] = {"client.unstable.room_account_data_msc3391", "/_matrix/client/unstable/org.matrix.msc3391/user/{userId}/rooms/{roomId}/account_data/{type}"},
    [190] = {"client.unstable.room_summary_nheko", "/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}"},
    [191] = {"client.unstable.room_summary_nheko_rooms", "/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary"},
    [192] = {"client.unstable.profile_field_msc4133", "/_matrix/client/unstable/uk.tcpip.msc4133/profile/{userId}/{keyName}"},
    [193] = {"client.unstable.thread_subscription", "/_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription"},
    [194] = {"client.unstable.thread_subscriptions", "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions"},
    [195] = {"client.unstable.login_token_msc3882", "/_matrix/client/unstable/org.matrix.msc3882/login/token"},
    [196] = {"client.unstable.keys_claim_msc3983", "/_matrix/client/unstable/org.matrix.msc3983/keys/claim"},
    [197] = {"client.unstable.account_status_msc3720", "/_matrix/client/unstable/org.matrix.msc3720/account_status"},
    [198] = {"client.unstable.room_aliases_msc2432", "/_matrix/client/unstable/org.matrix.msc2432/rooms/{roomId}/aliases"},
    [199] = {"federation.v1.send_join", "/_matrix/federation/v1/send_join/{roomId}/{eventId}"},
    [200] = {"federation.v1.send_leave", "/_matrix/federation/v1/send_leave/{roomId}/{eventId}"},
    [201] = {"federation.v1.invite", "/_matrix/federation/v1/invite/{roomId}/{eventId}"},
    [202] = {"federation.v1.make_knock", "/_matrix/federation/v1/make_knock/{roomId}/{userId}"},
    [203] = {"federation.v1.send_knock", "/_matrix/federation/v1/send_knock/{roomId}/{eventId}"},
    [204] = {"federation.v1.query", "/_matrix/federation/v1/query/{queryType}"},
    [205] = {"federation.v1.openid_userinfo", "/_matrix/federation/v1/openid/userinfo"},
    [206] = {"federation.v1.exchange_third_party_invite", "/_matrix/federation/v1/exchange_third_party_invite/{roomId}"},
    [207] = {"federation.v1.threepid_onbind", "/_matrix/federation/v1/3pid/onbind"},
    [208] = {"federation.unstable.hierarchy_msc2946", "/_matrix/federation/unstable/org.matrix.msc2946/hierarchy/{roomId}"},
    [209] = {"federation.unstable.room_complexity", "/_matrix/federation/unstable/rooms/{roomId}/complexity"},
    [210] = {"federation.unstable.user_keys_claim", "/_matrix/federation/unstable/user/keys/claim"},
    [211] = {"key.v2.server_key", "/_matrix/key/v2/server/{keyId}"},
    [212] = {"key.v2.query_server_key", "/_matrix/key/v2/query/{serverName}/{keyId}"},
    [213] = {"policy.v1.sign", "/_matrix/policy/v1/sign"},
    [214] = {"policy.unstable.sign", "/_matrix/policy/unstable/org.matrix.msc4284/sign"},
    [215] = {"wellknown.support", "/.well-known/matrix/support"},
    [216] = {"wellknown.policy_server", "/.well-known/matrix/policy_server"},
    [217] = {"media.r0.thumbnail", "/_matrix/media/r0/thumbnail/{serverName}/{mediaId}"},
    [218] = {"media.r0.upload", "/_matrix/media/r0/upload"},
    [219] = {"media.r0.download_filename", "/_matrix/media/r0/download/{serverName}/{mediaId}/{fileName}"},
    [220] = {"media.r0.config", "/_matrix/media/r0/config"},
    [221] = {"media.r0.preview_url", "/_matrix/media/r0/preview_url"},
    [222] = {"client.r0.keys_claim", "/_matrix/client/r0/keys/claim"},
    [223] = {"client.r0.send_to_device", "/_matrix/client/r0/sendToDevice/{eventType}/{txnId}"},
    [224] = {"client.r0.login", "/_matrix/client/r0/login"},
    [225] = {"client.r0.state_event_nokey", "/_matrix/client/r0/rooms/{roomId}/state/{eventType}"},
    [226] = {"client.r0.whoami", "/_matrix/client/r0/account/whoami"},
    [227] = {"client.r0.room_state", "/_matrix/client/r0/rooms/{roomId}/state"},
    [228] = {"client.r0.event", "/_matrix/client/r0/rooms/{roomId}/event/{eventId}"},
    [229] = {"client.r0.members", "/_matrix/client/r0/rooms/{roomId}/members"},
    [230] = {"client.r0.joined_members", "/_matrix/client/r0/rooms/{roomId}/joined_members"},
    [231] = {"client.r0.context", "/_matrix/client/r0/rooms/{roomId}/context/{eventId}"},
    [232] = {"client.r0.redact", "/_matrix/client/r0/rooms/{roomId}/redact/{eventId}/{txnId}"},
    [233] = {"client.r0.presence", "/_matrix/client/r0/presence/{userId}/status"},
    [234] = {"client.r0.account_data", "/_matrix/client/r0/user/{userId}/account_data/{type}"},
    [235] = {"client.r0.room_account_data", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/account_data/{type}"},
    [236] = {"client.r0.keys_changes", "/_matrix/client/r0/keys/changes"},
    [237] = {"client.r0.capabilities", "/_matrix/client/r0/capabilities"},
    [238] = {"client.r0.filter_create", "/_matrix/client/r0/user/{userId}/filter"},
    [239] = {"client.r0.filter_get", "/_matrix/client/r0/user/{userId}/filter/{filterId}"},
    [240] = {"client.r0.join", "/_matrix/client/r0/join/{roomIdOrAlias}"},
    [241] = {"client.r0.room_join", "/_matrix/client/r0/rooms/{roomId}/join"},
    [242] = {"client.r0.leave", "/_matrix/client/r0/rooms/{roomId}/leave"},
    [243] = {"client.r0.invite", "/_matrix/client/r0/rooms/{roomId}/invite"},
    [244] = {"client.r0.create_room", "/_matrix/client/r0/createRoom"},
    [245] = {"client.r0.profile", "/_matrix/client/r0/profile/{userId}"},
    [246] = {"client.r0.profile_displayname", "/_matrix/client/r0/profile/{userId}/displayname"},
    [247] = {"client.r0.profile_avatar_url", "/_matrix/client/r0/profile/{userId}/avatar_url"},
    [248] = {"client.r0.devices", "/_matrix/client/r0/devices"},
    [249] = {"client.r0.device", "/_matrix/client/r0/devices/{deviceId}"},
    [250] = {"client.r0.pushrules", "/_matrix/client/r0/pushrules/"},
    [251] = {"client.r0.logout", "/_matrix/client/r0/logout"},
    [252] = {"client.r0.joined_rooms", "/_matrix/client/r0/joined_rooms"},
    [253] = {"client.r0.directory_room", "/_matrix/client/r0/directory/room/{roomAlias}"},
    [254] = {"client.r0.public_rooms", "/_matrix/client/r0/publicRooms"},
    [255] = {"client.r0.user_directory_search", "/_matrix/client/r0/user_directory/search"},
    [256] = {"client.r0.voip_turn_server", "/_matrix/client/r0/voip/turnServer"},
    [257] = {"client.r0.tags", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags"},
    [258] = {"client.r0.tag", "/_matrix/client/r0/user/{userId}/rooms/{roomId}/tags/{tag}"},
    [259] = {"client.r0.notifications", "/_matrix/client/r0/notifications"},
    [260] = {"client.r0.pushers", "/_matrix/client/r0/pushers"},
    [261] = {"client.r0.pushers_set", "/_matrix/client/r0/pushers/set"},
    [262] = {"client.r0.search", "/_matrix/client/r0/search"},
    [263] = {"client.r0.delete_devices", "/_matrix/client/r0/delete_devices"},
    [264] = {"client.r0.register", "/_matrix/client/r0/register"},
    [265] = {"client.r0.kick", "/_matrix/client/r0/rooms/{roomId}/kick"},
    [266] = {"client.r0.ban", "/_matrix/client/r0/rooms/{roomId}/ban"},
    [267] = {"client.r0.unban", "/_matrix/client/r0/rooms/{roomId}/unban"},
    [268] = {"client.r0.forget", "/_matrix/client/r0/rooms/{roomId}/forget"},
    [269] = {"client.r0.report_event", "/_matrix/client/r0/rooms/{roomId}/report/{eventId}"},
    [270] = {"client.r0.directory_list_room", "/_matrix/client/r0/directory/list/room/{roomId}"},
    [271] = {"client.r0.pushrule", "/_matrix/client/r0/pushrules/{scope}/{kind}/{ruleId}"},
    [272] = {"client.r0.pushrule_enabled", "/_matrix/client/r0/pushrules/{scope}/{kind}/{ruleId}/enabled"},
    [273] = {"client.r0.pushrule_actions", "/_matrix/client/r0/pushrules/{scope}/{kind}/{ruleId}/actions"},
    [274] = {"client.r0.room_keys_version", "/_matrix/client/r0/room_keys/version"},
    [275] = {"client.r0.room_keys_keys", "/_matrix/client/r0/room_keys/keys"},
    [276] = {"client.r0.room_keys_room_session", "/_matrix/client/r0/room_keys/keys/{roomId}/{sessionId}"},
    [277] = {"client.unstable.room_keys_version", "/_matrix/client/unstable/room_keys/version"},
    [278] = {"client.unstable.room_keys_version_id", "/_matrix/client/unstable/room_keys/version/{version}"},
    [279] = {"client.unstable.room_keys_keys", "/_matrix/client/unstable/room_keys/keys"},
    [280] = {"client.unstable.room_keys_room", "/_matrix/client/unstable/room_keys/keys/{roomId}"},
    [281] = {"client.unstable.room_keys_room_session", "/_matrix/client/unstable/room_keys/keys/{roomId}/{sessionId}"},
    [282] = {"client.unstable.keys_device_signing_upload", "/_matrix/client/unstable/keys/device_signing/upload"},
    [283] = {"client.unstable.keys_signatures_upload", "/_matrix/client/unstable/keys/signatures/upload"},
  },
}
local SCHEMAS = {
  [1] = {
    short_routes = {"client.send", "client.sync", "client.messages", "client.state_event", "client.receipt", "client.typing", "client.read_markers", "client.redact", "client.event", "client.keys_query", "client.keys_upload", "client.keys_claim", "client.send_to_device", "client.members", "client.join", "client.room_join", "client.leave", "client.invite", "client.create_room", "client.profile_displayname", "client.presence", "client.account_data", "client.room_state", "client.v1.media_download"},
    param_kinds = {["eventId"] = "event_id", ["eventType"] = "event_type", ["roomId"] = "room", ["roomIdOrAlias"] = "room", ["txnId"] = "txn", ["userId"] = "user"},
    message_routes = {["client.r0.send"] = true, ["client.send"] = true},
    message_event_type = "m.room.message",
  },
}
local VALUES = {
  [1] = {
    type = {},
    msgtype = {},
  },
  [2] = {
    type = {[0] = "m.room.message", [1] = "m.room.member", [2] = "m.reaction", [3] = "m.receipt", [4] = "m.typing", [5] = "m.presence", [6] = "m.room.redaction", [7] = "m.room.encrypted", [8] = "m.room.power_levels", [9] = "m.room.create", [10] = "m.room.join_rules", [11] = "m.room.history_visibility", [12] = "m.room.name", [13] = "m.room.topic", [14] = "m.room.avatar", [15] = "m.room.canonical_alias", [16] = "m.room.guest_access", [17] = "m.room.encryption", [18] = "m.fully_read", [19] = "m.direct", [20] = "m.push_rules", [21] = "m.tag", [22] = "m.room_key", [23] = "m.sticker", [24] = "m.room.server_acl", [25] = "m.room.tombstone", [26] = "m.room.pinned_events", [27] = "m.room.third_party_invite", [28] = "m.room.aliases", [29] = "m.room_key_request", [30] = "m.forwarded_room_key", [31] = "m.dummy", [32] = "m.secret.request", [33] = "m.secret.send", [34] = "m.key.verification.request", [35] = "m.key.verification.ready", [36] = "m.key.verification.start", [37] = "m.key.verification.accept", [38] = "m.key.verification.key", [39] = "m.key.verification.mac", [40] = "m.key.verification.done", [41] = "m.key.verification.cancel", [42] = "m.call.invite", [43] = "m.call.candidates", [44] = "m.call.answer", [45] = "m.call.hangup", [46] = "m.call.select_answer", [47] = "m.call.negotiate", [48] = "m.call.reject", [49] = "m.space.child", [50] = "m.space.parent", [51] = "m.ignored_user_list", [52] = "m.room.related_groups", [53] = "m.policy.rule.user", [54] = "m.policy.rule.room", [55] = "m.policy.rule.server", [56] = "m.poll.start", [57] = "m.poll.response", [58] = "m.poll.end", [59] = "m.beacon_info", [60] = "m.beacon", [61] = "m.login.password", [62] = "m.login.dummy", [63] = "m.login.token", [64] = "m.login.sso", [65] = "m.login.recaptcha", [66] = "m.login.email.identity", [67] = "m.login.msisdn", [68] = "m.login.registration_token", [69] = "m.login.terms", [70] = "m.login.application_service", [71] = "m.id.user", [72] = "m.id.thirdparty", [73] = "m.id.phone", [74] = "m.secret_storage.default_key", [75] = "m.cross_signing.master", [76] = "m.cross_signing.self_signing", [77] = "m.cross_signing.user_signing", [78] = "m.megolm_backup.v1", [79] = "m.identity_server", [80] = "m.room.bot.options", [81] = "m.widget", [82] = "im.vector.modular.widgets", [83] = "io.element.widgets.layout", [84] = "org.matrix.msc3401.call", [85] = "org.matrix.msc3401.call.member", [86] = "m.marked_unread", [87] = "m.call.member"},
    msgtype = {[0] = "m.text", [1] = "m.notice", [2] = "m.emote", [3] = "m.image", [4] = "m.file", [5] = "m.audio", [6] = "m.video", [7] = "m.location", [8] = "m.key.verification.request", [9] = "m.bad.encrypted", [10] = "m.server_notice"},
  },
}
-- END GENERATED TABLES

-- the project's private CoAP options (coap_gateway/codec/options.py)
local OPTION_NAMES = {
    [65000] = "HTTP-Status", [65003] = "Access-Token", [65004] = "HTTP-Header", [65007] = "No-Token",
    [65008] = "Token-Unbound", [65011] = "Route", [65012] = "Handle-Unknown", [65014] = "Push-Parts",
    [65015] = "Sync-Push",
    [65018] = "Push-Continue",
    [65019] = "Token-Handle", [65020] = "Token-Bound",
}
local OPT_URI_PATH, OPT_ROUTE = 11, 65011

-- ---------------------------------------------------------------- fields

local KINDS = {[1] = "IK1", [2] = "IK2", [3] = "XX1", [4] = "XX2", [5] = "XX3", [6] = "RESET", [7] = "REFUSE",
               [8] = "WAKE"}
local KIND_NAMES = {
    [0] = "Data frame", [1] = "IK1 (handshake, client to server)", [2] = "IK2 (handshake, server to client)",
    [3] = "XX1 (handshake)", [4] = "XX2 (handshake)", [5] = "XX3 (handshake)", [6] = "RESET (no session)",
    [7] = "REFUSE (handshake refused)", [8] = "WAKE (open or check the session, responder to initiator)",
}
local REFUSE_REASONS = {[1] = "profile digest differs", [2] = "unknown profile", [3] = "IK1 did not decrypt"}
local TYPES = {[0] = "CON", [1] = "NON", [2] = "ACK", [3] = "RST"}

local f = {
    kind = ProtoField.uint8("cgw.kind", "Kind", base.DEC, KIND_NAMES),
    profile = ProtoField.uint8("cgw.profile", "Profile", base.DEC),
    profile_digest = ProtoField.bytes("cgw.profile_digest", "Profile digest"),
    ephemeral = ProtoField.bytes("cgw.ephemeral", "Ephemeral public key"),
    static = ProtoField.bytes("cgw.static", "Static public key (encrypted)"),
    payload = ProtoField.bytes("cgw.payload", "Payload (encrypted)"),
    tag = ProtoField.bytes("cgw.tag", "Tag"),
    flags = ProtoField.uint8("cgw.flags", "Flags", base.HEX),
    minutes = ProtoField.uint24("cgw.minutes", "Client clock (minutes mod 2^24)", base.DEC),
    echo = ProtoField.bytes("cgw.echo", "Echo"),
    reason = ProtoField.uint8("cgw.reason", "Reason", base.DEC, REFUSE_REASONS),
    server_digest = ProtoField.bytes("cgw.server_digest", "Server's profile digest"),
    session = ProtoField.string("cgw.session", "Session"),
    direction = ProtoField.string("cgw.direction", "Direction"),
    coap_header = ProtoField.bytes("cgw.header", "CoAP header and token (clear)"),
    type = ProtoField.uint8("cgw.type", "Type", base.DEC, TYPES),
    code = ProtoField.string("cgw.code", "Code"),
    mid = ProtoField.uint16("cgw.mid", "Message ID", base.DEC),
    seq = ProtoField.uint8("cgw.seq", "Seq", base.DEC),
    counter = ProtoField.string("cgw.counter", "Counter"),
    nonce = ProtoField.string("cgw.nonce", "Nonce"),
    sealed = ProtoField.bytes("cgw.sealed", "Sealed (options, payload)"),
    decrypted = ProtoField.bool("cgw.decrypted", "Decrypted"),
    tag_checked = ProtoField.string("cgw.tag_checked", "Tag"),
    route = ProtoField.string("cgw.route", "Route"),
    route_name = ProtoField.string("cgw.route_name", "Route name"),
    method = ProtoField.string("cgw.method", "Method"),
    option = ProtoField.string("cgw.option", "Option"),
}
proto.fields = {}
for _, field in pairs(f) do table.insert(proto.fields, field) end

local e_nokey = ProtoExpert.new("cgw.sealed.nokey", "Sealed: no key for this frame in the key log",
    expert.group.DECRYPTION, expert.severity.NOTE)
local e_tag = ProtoExpert.new("cgw.sealed.undecrypted", "Sealed: no logged key authenticates this frame",
    expert.group.DECRYPTION, expert.severity.NOTE)
local e_short = ProtoExpert.new("cgw.short", "Too short for its kind", expert.group.MALFORMED, expert.severity.ERROR)
proto.experts = {e_nokey, e_tag, e_short}

proto.prefs.keylog = Pref.string("Key log file", "", "The file a gateway wrote with --keylog (COAP_GATEWAY_KEYLOG)")
proto.prefs.ports = Pref.range("UDP ports", "5683-5684", "UDP ports of server and federation gateways", 65535)
proto.prefs.plaintext = Pref.bool("Plain CoAP without a handshake", false,
    "Hand data frames to the CoAP dissector as they are when no handshake was seen for their addresses "
    .. "(gateways started with --plaintext)")

local coap_dissector = Dissector.get("coap")

-- ---------------------------------------------------------------- key log and session state

local keylog = {}      -- eph hex -> entry
local keylog_list = {} -- entries in file order
local sessions = {}    -- eph hex -> state (first pass)
local by_pair = {}     -- "src|dst" -> {state, client endpoint}
local results = {}     -- frame number -> what the first pass found
local pairs_seen = {}  -- "src|dst" -> a handshake was seen

local function fromhex(h)
    return (h:gsub("..", function(c) return string.char(tonumber(c, 16)) end))
end

local function tohex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function load_keylog()
    keylog, keylog_list = {}, {}
    local path = proto.prefs.keylog
    if path == nil or path == "" then return end
    local file = io.open(path, "r")
    if file == nil then return end
    for line in file:lines() do
        local label, rest = line:match("^(%S+)%s+(.*)$")
        if label == "COAP_GATEWAY_SESSION" then
            local e = {}
            for k, v in rest:gmatch("(%w+)=(%S+)") do e[k] = v end
            if e.eph and e.c2s and e.s2c then
                e.rekey = tonumber(e.rekey or "65536")
                keylog[e.eph] = e
                keylog_list[#keylog_list + 1] = e
            end
        end
    end
    file:close()
end

local function new_state(entry)
    local st = {entry = entry, sid = entry.sid or "?", pattern = entry.pattern,
                keys = {c2s = {[0] = fromhex(entry.c2s)}, s2c = {[0] = fromhex(entry.s2c)}},
                highest = {c2s = 0, s2c = -1},   -- the client's counter 0 went into IK1/XX3
                handles = {},                    -- Route handles and txn scope defined so far
                mids = {c2s = {}, s2c = {}}}     -- MID -> counters of CON requests sent that way
    return st
end

local function state_for(eph_hex)
    local st = sessions[eph_hex]
    if st == nil and keylog[eph_hex] ~= nil then
        st = new_state(keylog[eph_hex])
        sessions[eph_hex] = st
    end
    return st
end

function proto.init()
    load_keylog()
    sessions, by_pair, results, pairs_seen = {}, {}, {}, {}
end

local function epoch_key(st, dir, counter)
    local epoch = floor(counter / st.entry.rekey)
    local keys = st.keys[dir]
    if keys[epoch] == nil then
        local e = 0
        while keys[e + 1] ~= nil do e = e + 1 end
        while e < epoch do keys[e + 1] = rekey(keys[e]); e = e + 1 end
    end
    return keys[epoch]
end

local function endpoint(addr, port) return tostring(addr) .. ":" .. tostring(port) end

local function bind_pair(st, client, server)
    by_pair[client .. "|" .. server] = {st = st, client = client}
    by_pair[server .. "|" .. client] = {st = st, client = client}
    pairs_seen[client .. "|" .. server], pairs_seen[server .. "|" .. client] = true, true
end

local function reconstruct(highest, seq)
    local expected = highest + 1
    local candidate = expected - expected % 256 + seq
    if candidate - expected > 127 then candidate = candidate - 256
    elseif candidate - expected < -128 then candidate = candidate + 256 end
    if candidate < 0 then candidate = candidate + 256 end
    return candidate
end

local function nonce_words(n, piggy)
    local lo, hi = n % TWO32, floor(n / TWO32)
    if piggy then hi = hi + 0x80000000 end
    return lo, hi
end

local function remember_request(st, dir, mid, counter)
    local list = st.mids[dir][mid]
    if list == nil then list = {}; st.mids[dir][mid] = list end
    for _, c in ipairs(list) do if c == counter then return end end
    list[#list + 1] = counter
end

-- try to open a data frame in session st, direction dir: result table or nil
local function open_in(st, dir, bytes, clear_len, ftype, code, mid)
    if ftype == 2 then  -- ACK with a code: piggybacked, nonce 2^63 + the request's counter
        local other = dir == "c2s" and "s2c" or "c2s"
        local counters = st.mids[other][mid]
        if counters == nil then return nil end
        local ad, sealed = bytes:sub(1, clear_len), bytes:sub(clear_len + 1)
        for i = #counters, 1, -1 do
            local n = counters[i]
            local lo, hi = nonce_words(n, true)
            local plain = aead_open(epoch_key(st, dir, n), lo, hi, ad, sealed)
            if plain ~= nil then
                return {plain = ad .. plain, counter = n, piggy = true}
            end
        end
        return nil
    end
    local seq = bytes:byte(clear_len + 1)
    local n = reconstruct(st.highest[dir], seq)
    local lo, hi = nonce_words(n, false)
    local ad = bytes:sub(1, clear_len + 1)
    local plain = aead_open(epoch_key(st, dir, n), lo, hi, ad, bytes:sub(clear_len + 2))
    if plain == nil then return nil end
    if n > st.highest[dir] then st.highest[dir] = n end
    if ftype == 0 and code >= 1 and code <= 31 then remember_request(st, dir, mid, n) end
    return {plain = bytes:sub(1, clear_len) .. plain, counter = n, seq = seq}
end

-- ---------------------------------------------------------------- CoAP helpers (ours: routes, names)

local function coap_code(code)
    local methods = {[1] = "GET", [2] = "POST", [3] = "PUT", [4] = "DELETE", [5] = "FETCH", [6] = "PATCH", [7] = "iPATCH"}
    if code == 0 then return "Empty" end
    if code < 32 then return methods[code] or string.format("0.%02d", code) end
    return string.format("%d.%02d", floor(code / 32), code % 32)
end

-- the options of a whole CoAP message: list of {number, value}; nil if malformed
local function parse_options(msg)
    local tkl = band(msg:byte(1), 0x0f)
    local pos, number, options = 5 + tkl, 0, {}
    while pos <= #msg do
        local b = msg:byte(pos)
        if b == 0xff then break end
        local delta, length = floor(b / 16), b % 16
        pos = pos + 1
        local function ext(v)
            if v == 13 then v = msg:byte(pos) + 13; pos = pos + 1
            elseif v == 14 then v = msg:byte(pos) * 256 + msg:byte(pos + 1) + 269; pos = pos + 2
            elseif v == 15 then return nil end
            return v
        end
        delta = ext(delta); if delta == nil then return nil end
        length = ext(length); if length == nil then return nil end
        number = number + delta
        if pos + length - 1 > #msg then return nil end
        options[#options + 1] = {number, msg:sub(pos, pos + length - 1)}
        pos = pos + length
    end
    return options
end

-- a minimal CBOR reader for the Route option's items: uint, negint, bytes, text, array
local function cbor_item(s, pos)
    local ib = s:byte(pos)
    if ib == nil then return nil end
    local major, info = floor(ib / 32), ib % 32
    pos = pos + 1
    local n
    if info < 24 then n = info
    elseif info <= 27 then
        local size = ({[24] = 1, [25] = 2, [26] = 4, [27] = 8})[info]
        n = 0
        for i = 0, size - 1 do n = n * 256 + (s:byte(pos + i) or 0) end
        pos = pos + size
    else return nil end
    if major == 0 then return {t = "uint", v = n}, pos end
    if major == 1 then return {t = "neg", v = -1 - n}, pos end
    if major == 2 or major == 3 then
        local v = s:sub(pos, pos + n - 1)
        return {t = major == 2 and "bytes" or "text", v = v}, pos + n
    end
    if major == 4 then
        local items = {}
        for i = 1, n do
            local item
            item, pos = cbor_item(s, pos)
            if item == nil then return nil end
            items[i] = item
        end
        return {t = "array", v = items}, pos
    end
    return nil
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function base64url(s)
    local out, bits, nbits = {}, 0, 0
    for i = 1, #s do
        bits, nbits = bits * 256 + s:byte(i), nbits + 8
        while nbits >= 6 do
            nbits = nbits - 6
            local v = floor(bits / 2 ^ nbits) % 64
            out[#out + 1] = B64:sub(v + 1, v + 1)
        end
        bits = bits % (2 ^ nbits)
    end
    if nbits > 0 then
        local v = (bits * 2 ^ (6 - nbits)) % 64
        out[#out + 1] = B64:sub(v + 1, v + 1)
    end
    return table.concat(out)
end

-- a Route parameter as text; handles and the transaction scope are resolved
-- from the definitions seen earlier in the session (first pass, in order)
local function param_text(kind, item, values, st)
    local handles = st and st.handles or {}
    if item.t == "text" then return item.v end
    if item.t == "array" and #item.v == 2 then  -- a definition: [handle, value]
        local h, v = item.v[1], item.v[2]
        local shown = v.t == "bytes" and ((kind == "room" and "!" or "") .. base64url(v.v)) or tostring(v.v)
        if kind == "txn" then
            handles["scope"] = shown
            return shown .. "." .. tostring(h.v)
        end
        handles[kind .. "#" .. tostring(h.v)] = shown
        return shown
    end
    if item.t == "bytes" then
        return (kind == "event_id" and "$" or "!") .. base64url(item.v)
    end
    if item.t == "uint" then
        if kind == "room" or kind == "user" then
            return handles[kind .. "#" .. item.v] or ("<" .. kind .. " #" .. item.v .. ">")
        end
        if kind == "txn" then
            return handles["scope"] and (handles["scope"] .. "." .. item.v) or ("<txn " .. item.v .. ">")
        end
        if kind == "event_type" then return (values and values.type[item.v]) or ("<type " .. item.v .. ">") end
    end
    if item.t == "neg" and kind == "event_type" then
        return "m.room.message"  -- the body is the message text (protocol.md "Message text")
    end
    return "?"
end

local function expand(template, params)
    local i = 0
    return (template:gsub("{[^}]*}", function()
        i = i + 1
        return params[i] or "?"
    end))
end

local function template_names(template)
    local names = {}
    for name in template:gmatch("{([^}]*)}") do names[#names + 1] = name end
    return names
end

-- the request's route: name, path (or nil)
local function describe_route(options, profile_id, st)
    local profile = PROFILES[profile_id or 3] or PROFILES[3]
    if profile == nil then return nil end
    local routes = ROUTES[profile.routes] or {}
    local values = VALUES[profile.cbor]
    local schema = profile.schemas and SCHEMAS[profile.schemas]
    local uri = {}
    for _, opt in ipairs(options) do
        if opt[1] == OPT_ROUTE and schema then
            local s, pos, items = opt[2], 1, {}
            while pos <= #s do
                local item
                item, pos = cbor_item(s, pos)
                if item == nil then return "?", "(malformed Route option)" end
                items[#items + 1] = item
            end
            if #items == 0 or items[1].t ~= "uint" then return "?", "(malformed Route option)" end
            local code, route = items[1].v, nil
            if code < 24 then
                local name = schema.short_routes[code + 1]
                for _, r in pairs(routes) do if r[1] == name then route = r end end
            else
                route = routes[code - 24]
            end
            if route == nil then return "?", "(unknown route code " .. code .. ")" end
            local params, names = {}, template_names(route[2])
            for i, name in ipairs(names) do
                local item = items[i + 1]
                params[i] = item and param_text(schema.param_kinds[name] or "any", item, values, st) or "?"
            end
            local extra = items[#names + 2]
            if extra ~= nil then  -- the encrypted schema: the body's template, the payload its ciphertext
                local h = extra.t == "array" and extra.v[1] and extra.v[1].v or extra.v
                local how = extra.t == "array" and "defined" or "handle"
                return route[1], expand(route[2], params) .. " (body template #" .. tostring(h) .. " " .. how
                    .. "; payload: the ciphertext)"
            end
            return route[1], expand(route[2], params)
        elseif opt[1] == OPT_URI_PATH then
            uri[#uri + 1] = opt[2]
        end
    end
    if #uri == 0 then
        for _, opt in ipairs(options) do
            if opt[1] == 65015 and #opt[2] >= 1 then  -- Sync-Push control: op, then the observation's token
                local op = ({[1] = "check", [2] = "cancel"})[opt[2]:byte(1)] or ("op " .. opt[2]:byte(1))
                return "sync_push." .. op, "(sync push: " .. op .. " observation " .. tohex(opt[2]:sub(2)) .. ")"
            end
        end
        return "root", "/"
    end
    -- Uri-Path form: a one-character first segment is a route code (UTF-8)
    local first = uri[1]
    local code
    if #first == 1 then code = first:byte(1)
    elseif #first == 2 and first:byte(1) >= 0xc0 then code = (first:byte(1) % 32) * 64 + first:byte(2) % 64 end
    if code ~= nil and routes[code] then
        local params = {}
        for i = 2, #uri do params[i - 1] = uri[i] end
        if routes[code][1] == "federation.v1.send" and #uri == 1 then
            -- the send route's code alone: a compact transaction (docs/protocol.md §11a)
            return routes[code][1], "/_matrix/federation/v1/send/ (compact transaction)"
        end
        return routes[code][1], expand(routes[code][2], params)
    end
    if first == "" then table.remove(uri, 1) end
    return "literal", "/" .. table.concat(uri, "/")
end

-- hand a whole CoAP message to Wireshark's CoAP dissector, then add ours
local function show_coap(msg, label, pinfo, tree, st, profile_id, r)
    local ba = ByteArray.new(tohex(msg))
    local tvb = ba:tvb(label)
    coap_dissector:call(tvb, pinfo, tree)
    local code = msg:byte(2)
    local options = parse_options(msg)
    local sub = tree:add(proto, tvb(), "coap-gateway: " .. label)
    if options == nil then return end
    for _, opt in ipairs(options) do
        local name = OPTION_NAMES[opt[1]]
        if name then
            local value = #opt[2] == 0 and "(empty)" or tohex(opt[2])
            sub:add(f.option, name .. " (" .. opt[1] .. "): " .. value)
        end
    end
    if code >= 1 and code <= 31 then
        sub:add(f.method, coap_code(code))
        if r.route == nil then  -- the first pass: handle definitions are read in order
            local name, path = describe_route(options, profile_id, st)
            r.route = name and {name, path} or false
        end
        if r.route then
            sub:add(f.route_name, r.route[1])
            sub:add(f.route, r.route[2])
            pinfo.cols.info:append("  " .. r.route[2])
        end
    end
end

-- ---------------------------------------------------------------- the dissector

local function dissect_handshake(tvb, pinfo, tree, kind)
    local len = tvb:len()
    local src, dst = endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port)
    local name = KINDS[kind]
    local sub = tree:add(proto, tvb(), "coap-gateway " .. name)
    sub:add(f.kind, tvb(0, 1))
    pinfo.cols.protocol = "CGW"
    pinfo.cols.info = name
    local r = results[pinfo.number]
    local first_pass = not pinfo.visited and r == nil
    if first_pass then r = {}; results[pinfo.number] = r end
    local minimum = ({[1] = 104, [2] = 50, [3] = 36, [4] = 97, [5] = 66, [6] = 5, [7] = 6, [8] = 1})[kind]
    if len < minimum then
        sub:add_proto_expert_info(e_short)
        return len
    end
    local payload_off, key_name, st
    if kind == 1 or kind == 3 then
        sub:add(f.profile, tvb(1, 1))
        sub:add(f.profile_digest, tvb(2, 2))
        sub:add(f.ephemeral, tvb(4, 32))
        local eph = tohex(tvb(4, 32):raw())
        if first_pass then
            pairs_seen[src .. "|" .. dst], pairs_seen[dst .. "|" .. src] = true, true
            st = state_for(eph)
            if st then st.profile = tvb(1, 1):uint(); bind_pair(st, src, dst) end
            r.st = st
        end
        st = r.st
        if kind == 1 then
            sub:add(f.static, tvb(36, 48))
            payload_off, key_name = 84, "ik1"
        end
    elseif kind == 2 or kind == 4 or kind == 5 then
        if first_pass then
            local b = by_pair[src .. "|" .. dst]
            r.st = b and b.st
        end
        st = r.st
        if kind == 2 then
            sub:add(f.ephemeral, tvb(1, 32)); payload_off, key_name = 33, "ik2"
        elseif kind == 4 then
            sub:add(f.ephemeral, tvb(1, 32)); sub:add(f.static, tvb(33, 48)); sub:add(f.payload, tvb(81, len - 81))
        else
            sub:add(f.static, tvb(1, 48)); payload_off, key_name = 49, "xx3"
        end
    elseif kind == 6 then
        sub:add(f.echo, tvb(1, 4))
        pinfo.cols.info = "RESET: no session for the frame " .. tohex(tvb(1, 4):raw())
        return len
    elseif kind == 8 then
        if len ~= 1 then sub:add_proto_expert_info(e_short) end
        pinfo.cols.info = "WAKE: open or check the session"
        return len
    else
        sub:add(f.reason, tvb(1, 1))
        sub:add(f.echo, tvb(2, 4))
        if len >= 8 then sub:add(f.server_digest, tvb(6, 2)) end
        pinfo.cols.info = "REFUSE: " .. (REFUSE_REASONS[tvb(1, 1):uint()] or "reason " .. tvb(1, 1):uint())
        return len
    end
    if st then sub:add(f.session, st.sid) end
    if payload_off == nil then return len end
    sub:add(f.payload, tvb(payload_off, len - payload_off - 16))
    sub:add(f.tag, tvb(len - 16, 16))
    local key = st and st.entry[key_name]
    if key == nil then
        if st == nil then pinfo.cols.info:append(" (payload sealed)") end
        return len
    end
    if first_pass then
        r.plain = chacha_xor(fromhex(key), 0, 0, tvb(payload_off, len - payload_off - 16):raw())
    end
    local plain = r.plain
    local ptvb = ByteArray.new(tohex(plain)):tvb(name .. " payload")
    local psub = sub:add(proto, ptvb(), name .. " payload (decrypted; tag not checked)")
    psub:add(f.flags, ptvb(0, 1))
    local body_off = 1
    if kind == 1 then psub:add(f.minutes, ptvb(1, 3)); body_off = 4 end
    if #plain > body_off then
        local msg = plain:sub(body_off + 1)
        if first_pass and kind ~= 2 then
            local mid = msg:byte(3) * 256 + msg:byte(4)
            if floor(msg:byte(1) / 16) % 4 == 0 then remember_request(st, "c2s", mid, 0) end
        end
        show_coap(msg, name .. " CoAP", pinfo, tree, st, st.profile, r)
        pinfo.cols.protocol = "CGW/CoAP"
        pinfo.cols.info:prepend(name .. ": ")
    end
    return len
end

local function dissect_data(tvb, pinfo, tree)
    local len = tvb:len()
    local bytes = tvb:raw()
    local b0 = bytes:byte(1)
    local tkl, ftype, code = b0 % 16, floor(b0 / 16) % 4, bytes:byte(2)
    local src, dst = endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port)
    local pair = src .. "|" .. dst
    if len < 4 or tkl > 8 or len < 4 + tkl then return 0 end
    local mid = bytes:byte(3) * 256 + bytes:byte(4)
    local clear_len = 4 + tkl
    if ftype == 2 and code == 0 then  -- empty ACK: never sealed
        coap_dissector:call(tvb, pinfo, tree)
        return len
    end
    if not pairs_seen[pair] and proto.prefs.plaintext and results[pinfo.number] == nil then
        coap_dissector:call(tvb, pinfo, tree)
        return len
    end
    local r = results[pinfo.number]
    if r == nil and not pinfo.visited then
        r = {}
        results[pinfo.number] = r
        local b = by_pair[pair]
        local tried = {}
        if b then
            local dir = b.client == src and "c2s" or "s2c"
            r.opened = open_in(b.st, dir, bytes, clear_len, ftype, code, mid)
            if r.opened then r.st, r.dir = b.st, dir end
            tried[b.st] = true
        end
        if r.opened == nil then  -- a new address (NAT rebinding), or no handshake in the capture
            for _, entry in ipairs(keylog_list) do
                local st = state_for(entry.eph)
                if not tried[st] then
                    for _, dir in ipairs({"c2s", "s2c"}) do
                        local opened = open_in(st, dir, bytes, clear_len, ftype, code, mid)
                        if opened then
                            r.opened, r.st, r.dir = opened, st, dir
                            if dir == "c2s" then bind_pair(st, src, dst) else bind_pair(st, dst, src) end
                            break
                        end
                    end
                    if r.opened then break end
                end
            end
        end
    end
    r = r or {}
    local sub = tree:add(proto, tvb(), "coap-gateway data frame")
    sub:add(f.kind, tvb(0, 1), 0)
    sub:add(f.coap_header, tvb(0, clear_len))
    sub:add(f.type, tvb(0, 1), ftype)
    sub:add(f.code, tvb(1, 1), coap_code(code))
    sub:add(f.mid, tvb(2, 2))
    local sealed_off = clear_len
    if ftype ~= 2 then
        sub:add(f.seq, tvb(clear_len, 1))
        sealed_off = clear_len + 1
    end
    if len - sealed_off < 16 then
        sub:add_proto_expert_info(e_short)
        return len
    end
    if len - sealed_off > 16 then sub:add(f.sealed, tvb(sealed_off, len - sealed_off - 16)) end
    sub:add(f.tag, tvb(len - 16, 16))
    local opened = r.opened
    if opened == nil then
        sub:add(f.decrypted, false)
        sub:add_proto_expert_info(#keylog_list == 0 and e_nokey or e_tag)
        pinfo.cols.protocol = "CGW"
        pinfo.cols.info = string.format("Sealed %s %s MID:%d", TYPES[ftype], coap_code(code), mid)
        return len
    end
    sub:add(f.decrypted, true)
    sub:add(f.tag_checked, "verified (Poly1305)")
    sub:add(f.session, r.st.sid)
    sub:add(f.direction, r.dir == "c2s" and "client to server" or "server to client")
    sub:add(f.counter, tostring(opened.counter))
    sub:add(f.nonce, opened.piggy and ("2^63 + " .. opened.counter) or tostring(opened.counter))
    show_coap(opened.plain, "Decrypted CoAP", pinfo, tree, r.st, r.st.profile, r)
    pinfo.cols.protocol = "CGW/CoAP"
    return len
end

function proto.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    if len < 1 then return 0 end
    local b0 = tvb(0, 1):uint()
    if floor(b0 / 64) == 1 then return dissect_data(tvb, pinfo, tree) end
    if KINDS[b0] then return dissect_handshake(tvb, pinfo, tree, b0) end
    return 0
end

-- the heuristic (other ports): handshake openings with their exact shapes, and
-- data frames of address pairs a handshake was seen on
local function heuristic(tvb, pinfo, tree)
    local len = tvb:len()
    if len < 1 then return false end
    local b0 = tvb(0, 1):uint()
    local src, dst = endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port)
    local known = pairs_seen[src .. "|" .. dst] or results[pinfo.number] ~= nil
    if not known and not ((b0 == 1 and len >= 104) or (b0 == 3 and len == 36)) then return false end
    if not known and not PROFILES[tvb(1, 1):uint()] then return false end
    proto.dissector(tvb, pinfo, tree)
    return true
end

local udp_port = DissectorTable.get("udp.port")
local registered = {}
local function register_ports()
    for _, port in ipairs(registered) do udp_port:remove(port, proto) end
    registered = {}
    for low, high in tostring(proto.prefs.ports):gmatch("(%d+)%-?(%d*)") do
        high = high ~= "" and high or low
        for port = tonumber(low), tonumber(high) do
            udp_port:add(port, proto)
            registered[#registered + 1] = port
        end
    end
end
function proto.prefs_changed() register_ports() end
register_ports()
udp_port:add_for_decode_as(proto)
proto:register_heuristic("udp", heuristic)
