-- dispatch.lua: one task's dispatch in one call: (re)start its record for the new dispatch (the
-- state, reason and revoked mark of an earlier one removed) and append its signed launch message
-- to a launch stream. The executor queues one call per task in a dispatch batch's MULTI/EXEC.
--
-- KEYS[1] task: the task hash {p}:task:<pod name>
-- KEYS[2] stream: the launch stream {p}:launch:<queue> (or a priority band's) the launch goes to
-- ARGV[1] ttl: seconds the task hash lives
-- ARGV[2] maxlen: approximate MAXLEN of the launch stream
-- ARGV[3] owner: the dispatching scheduler's id
-- ARGV[4] dag_id: the task's dag_id
-- ARGV[5] task_id: the task's task_id
-- ARGV[6] run_id: the task's run_id
-- ARGV[7] try_number: the task's try number
-- ARGV[8] map_index: the task's map index
-- ARGV[9] queue: the task's queue
-- ARGV[10] namespace: the namespace its pod is launched in
-- ARGV[11] dispatch: the dispatch id ('' = none)
-- ARGV[12] digest: the launch message's digest
-- ARGV[13] updated: epoch seconds
-- ARGV[14] message: the encoded LaunchTask, XADDed as field `m`
-- ARGV[15] key_id: the signing key's id, XADDed as field `k` ('' = unsigned: no `k`, no `s`)
-- ARGV[16] sig: HMAC of the message for the launch stream, XADDed as field `s`
-- Returns the launch entry's id.

local task = KEYS[1]
local stream = KEYS[2]
local ttl = tonumber(ARGV[1])
local maxlen = ARGV[2]
local owner = ARGV[3]
local dag_id = ARGV[4]
local task_id = ARGV[5]
local run_id = ARGV[6]
local try_number = ARGV[7]
local map_index = ARGV[8]
local queue = ARGV[9]
local namespace = ARGV[10]
local dispatch = ARGV[11]
local digest = ARGV[12]
local updated = ARGV[13]
local message = ARGV[14]
local key_id = ARGV[15]
local sig = ARGV[16]

redis.call('HDEL', task, 'state', 'reason', 'revoked')
redis.call('HSET', task, 'owner', owner, 'dag_id', dag_id, 'task_id', task_id, 'run_id', run_id,
           'try_number', try_number, 'map_index', map_index, 'queue', queue, 'namespace', namespace,
           'dispatch', dispatch, 'digest', digest, 'updated', updated)
redis.call('EXPIRE', task, ttl)
if key_id ~= '' then
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'm', message, 'k', key_id, 's', sig)
end
return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'm', message)
