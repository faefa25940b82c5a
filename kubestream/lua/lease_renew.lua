-- lease_renew.lua: take the watcher lease if it is free, or extend it if this holder has it.
--
-- KEYS[1] lease: the lease string {p}:watcher:lease (the holder's name, with a PX expiry)
-- ARGV[1] holder: this process's name
-- ARGV[2] ms: the lease's lifetime in milliseconds
-- Returns 1 while this holder has the lease, 0 if another one has it.

local lease = KEYS[1]
local holder = ARGV[1]
local ms = ARGV[2]

if redis.call('GET', lease) == holder then
  return redis.call('PEXPIRE', lease, ms)
end
return redis.call('SET', lease, holder, 'NX', 'PX', ms) and 1 or 0
