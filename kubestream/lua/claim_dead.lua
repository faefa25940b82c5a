-- claim_dead.lua: take over the pending launch messages of a launcher that is dead.
--
-- KEYS[1] stream: one launch stream {p}:launch:<queue>
-- KEYS[2] alive: the dead launcher's liveness key {p}:alive:launcher:<name> (string with a TTL)
-- ARGV[1] group: the consumer group (launchers)
-- ARGV[2] dead: the dead launcher's consumer name
-- ARGV[3] me: the consumer name of the launcher taking over
-- ARGV[4] count: the most messages to claim
-- Returns {deliveries, entries, removed}: `deliveries` the flat list id1, count1, id2, count2... of
-- the claimed messages' delivery counts before this claim, `entries` the XCLAIM reply (id, fields),
-- `removed` 1 when the consumer, with nothing pending left, was removed from the group (never one
-- with pending messages: XGROUP DELCONSUMER would drop them). {{}, {}, 0} when the launcher is alive
-- (its liveness key exists).

local stream = KEYS[1]
local alive = KEYS[2]
local group = ARGV[1]
local dead = ARGV[2]
local me = ARGV[3]
local count = tonumber(ARGV[4])

if redis.call('EXISTS', alive) == 1 then return {{}, {}, 0} end
local pending = redis.call('XPENDING', stream, group, '-', '+', count, dead)
local entries = {}
local ids = {}
local deliveries = {}
for i, row in ipairs(pending) do
  ids[i] = row[1]
  deliveries[#deliveries + 1] = row[1]
  deliveries[#deliveries + 1] = row[4]
end
if #ids > 0 then
  -- claimed whatever their idle time: the script runs atomically, so they are still the dead one's
  entries = redis.call('XCLAIM', stream, group, me, 0, unpack(ids))
end
local removed = 0
if #pending < count then
  -- nothing of it is pending now: the consumer is gone for good
  redis.call('XGROUP', 'DELCONSUMER', stream, group, dead)
  removed = 1
end
return {deliveries, entries, removed}
