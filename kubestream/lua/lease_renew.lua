-- lease_renew.lua: take the watcher lease if it is free, or extend it if this process holds it.
--
-- KEYS[1] lease: the lease string {p}:watcher:lease (the holder's name, with a PX expiry)
-- KEYS[2] fence: the hash {p}:watcher:lease:fence: `token` of the holder, `epoch` (never expires)
-- ARGV[1] holder: this process's name (shown by `kubestream status`)
-- ARGV[2] token: this process's lease token (unique per process: two processes of one name differ)
-- ARGV[3] epoch: the epoch this process holds, or last held ('0' = none yet)
-- ARGV[4] ms: the lease's lifetime in milliseconds
-- Returns the epoch this process holds after the call: the same one when renewed, a new one
-- (larger than any before, also larger than ARGV epoch) when acquired, 0 when another one holds it.

local lease = KEYS[1]
local fence = KEYS[2]
local holder = ARGV[1]
local token = ARGV[2]
local epoch = ARGV[3]
local ms = ARGV[4]

if redis.call('EXISTS', lease) == 1 then
  local held = redis.call('HMGET', fence, 'token', 'epoch')
  if held[1] == token and held[2] == epoch then
    redis.call('PEXPIRE', lease, ms)
    return tonumber(epoch)
  end
  return 0
end
local acquired = redis.call('HINCRBY', fence, 'epoch', 1)
if acquired <= tonumber(epoch) then
  acquired = tonumber(epoch) + 1
  redis.call('HSET', fence, 'epoch', acquired)
end
redis.call('HSET', fence, 'token', token)
redis.call('SET', lease, holder, 'PX', ms)
return acquired
