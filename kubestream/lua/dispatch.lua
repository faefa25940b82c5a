-- dispatch.lua: the dispatch of a batch of tasks in one call: for each, (re)start its record for the
-- new dispatch (the state, reason and revoked mark of an earlier one removed) and append its signed
-- launch message to a launch stream. The executor makes one call per chunk of a dispatch batch, in
-- that chunk's MULTI/EXEC (one reply to parse per chunk instead of one per task).
--
-- KEYS (every one, in pairs): for each task, its hash {p}:task:<pod name>, then the launch stream
-- {p}:launch:<queue> (or a priority band's) its launch goes to
-- ARGV[1] ttl: seconds each task hash lives
-- ARGV[2] maxlen: approximate MAXLEN of the launch streams
-- ARGV[3] owner: the dispatching scheduler's id
-- ARGV[4] updated: epoch seconds
-- ARGV[5] launches: a msgpack array with one array per KEYS pair, in order: dag_id, task_id, run_id,
-- try_number, map_index, queue, namespace, dispatch ('' = none), digest (of the message), message (the
-- encoded LaunchTask, XADDed as field `m`), key_id (XADDed as field `k`; '' = unsigned: no `k`, no
-- `s`), sig (HMAC of the message for its launch stream, XADDed as field `s`); strings only
-- The record keeps its launch entry's id (`entry`): a launcher fails the task of a refused entry only
-- when it is this one (a copy of the message, e.g. without its signature, fails nothing).
-- Returns the launch entries' ids, in order.

local ttl = tonumber(ARGV[1])
local maxlen = ARGV[2]
local owner = ARGV[3]
local updated = ARGV[4]
local launches = ARGV[5]

local rows = cmsgpack.unpack(launches)
if #KEYS ~= 2 * #rows then
  return redis.error_reply('dispatch.lua: ' .. #KEYS .. ' keys for ' .. #rows .. ' launches')
end
local ids = {}
for i, r in ipairs(rows) do
  local task, stream = unpack(KEYS, 2 * i - 1, 2 * i)
  if r[11] ~= '' then
    ids[i] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'm', r[10], 'k', r[11], 's', r[12])
  else
    ids[i] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'm', r[10])
  end
  redis.call('HDEL', task, 'state', 'reason', 'revoked')
  redis.call('HSET', task, 'owner', owner, 'dag_id', r[1], 'task_id', r[2], 'run_id', r[3],
             'try_number', r[4], 'map_index', r[5], 'queue', r[6], 'namespace', r[7],
             'dispatch', r[8], 'digest', r[9], 'entry', ids[i], 'updated', updated)
  redis.call('EXPIRE', task, ttl)
end
return ids
