-- lease_renew.lua: take the watcher lease if it is free, or extend it if this process holds it.
--
-- KEYS[1] lease: the lease string {p}:watcher:lease (the holder's name, with a PX expiry)
-- KEYS[2] fence: the hash {p}:watcher:lease:fence: `token` of the holder, `epoch` (never expires)
-- ARGV[1] holder: this process's name (shown by `kubestream status`)
-- ARGV[2] token: this process's lease token (unique per process: two processes of one name differ)
-- ARGV[3] epoch: the epoch this process holds, or last held ('0' = none yet)
-- ARGV[4] ms: the lease's lifetime in milliseconds
-- ARGV[5] resume: '1' on this process's first call: a lease held under its name by an earlier
--         process (a restart of the same watcher, its predecessor dead) is taken at once
-- Returns the epoch this process holds after the call: the same one when renewed, a new one
-- (larger than any before, also larger than ARGV epoch) when acquired, 0 when another one holds it.

local lease = KEYS[1]
local fence = KEYS[2]
local holder = ARGV[1]
local token = ARGV[2]
local epoch = ARGV[3]
local ms = ARGV[4]
local resume = ARGV[5]

if redis.call('EXISTS', lease) == 1 then
  local held = redis.call('HMGET', fence, 'token', 'epoch')
  if held[1] == token and held[2] == epoch then
    redis.call('PEXPIRE', lease, ms)
    return tonumber(epoch)
  end
  if resume ~= '1' or redis.call('GET', lease) ~= holder then
    return 0
  end
  -- held under this name by an earlier process: taken over under a new epoch, which fences it out
end
local acquired = redis.call('HINCRBY', fence, 'epoch', 1)
if acquired <= tonumber(epoch) then
  acquired = tonumber(epoch) + 1
  redis.call('HSET', fence, 'epoch', acquired)
end
redis.call('HSET', fence, 'token', token)
redis.call('SET', lease, holder, 'PX', ms)
return acquired
