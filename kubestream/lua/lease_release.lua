-- lease_release.lua: give the watcher lease up, only if this holder has it.
--
-- KEYS[1] lease: the lease string {p}:watcher:lease
-- ARGV[1] holder: this process's name
-- Returns 1 if the lease was released, 0 if this holder did not have it.

local lease = KEYS[1]
local holder = ARGV[1]

if redis.call('GET', lease) == holder then return redis.call('DEL', lease) end
return 0
