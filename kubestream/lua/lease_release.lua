-- lease_release.lua: give the watcher lease up, only if this process holds it.
--
-- KEYS[1] lease: the lease string {p}:watcher:lease
-- KEYS[2] fence: the hash {p}:watcher:lease:fence (`token`, `epoch`; the epoch is kept)
-- ARGV[1] token: this process's lease token
-- ARGV[2] epoch: the epoch this process holds
-- Returns 1 if the lease was released, 0 if this process did not hold it.

local lease = KEYS[1]
local fence = KEYS[2]
local token = ARGV[1]
local epoch = ARGV[2]

if redis.call('EXISTS', lease) == 0 then return 0 end
local held = redis.call('HMGET', fence, 'token', 'epoch')
if held[1] ~= token or held[2] ~= epoch then return 0 end
redis.call('HDEL', fence, 'token')
return redis.call('DEL', lease)
