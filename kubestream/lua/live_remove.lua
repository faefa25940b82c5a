-- live_remove.lua: drop one member of the live set, only while the caller still holds the
-- watcher lease (see _fence.lua).
-- include: _fence.lua
--
-- KEYS[1] live: the live set of the watcher's cluster ({p}:live or {p}:watcher:cluster:<name>:live)
-- ARGV[1] lease: the watcher lease of the watcher's cluster (its fence is <lease>:fence)
-- ARGV[2] token: the watcher's lease token
-- ARGV[3] epoch: the lease epoch the watcher acquired
-- ARGV[4] member: the member to drop, "<namespace>/<pod>/<dispatch>" (or an older "<namespace>/<pod>")
-- Returns 1 when done (whether or not the member was there), 0 when the caller no longer holds
-- the lease (nothing written).

local live = KEYS[1]
local lease = ARGV[1]
local token = ARGV[2]
local epoch = ARGV[3]
local member = ARGV[4]

if not holds_lease(lease, token, epoch) then return 0 end
redis.call('SREM', live, member)
return 1
