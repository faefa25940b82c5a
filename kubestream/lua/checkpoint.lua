-- checkpoint.lua: record the watcher's resourceVersion of one namespace, only while the caller
-- still holds the watcher lease (see _fence.lua): a deposed leader never moves the checkpoint.
-- include: _fence.lua
--
-- KEYS[1] checkpoint: the string {p}:watcher:rv:<namespace> (or {p}:watcher:cluster:<name>:rv:<namespace>)
-- ARGV[1] lease: the watcher lease of the watcher's cluster (its fence is <lease>:fence)
-- ARGV[2] token: the watcher's lease token
-- ARGV[3] epoch: the lease epoch the watcher acquired
-- ARGV[4] rv: the resourceVersion whose events are all published
-- Returns 1 when written, 0 when the caller no longer holds the lease (nothing written).

local checkpoint = KEYS[1]
local lease = ARGV[1]
local token = ARGV[2]
local epoch = ARGV[3]
local rv = ARGV[4]

if not holds_lease(lease, token, epoch) then return 0 end
redis.call('SET', checkpoint, rv)
return 1
