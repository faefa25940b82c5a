-- fail_launch.lua: a launch that ends without a pod, atomically: acknowledge and delete its
-- entry, dead-letter it if asked, and publish its task's failed state (see _publish.lua).
-- include: _publish.lua
--
-- KEYS[1] stream: the launch stream {p}:launch:<queue> holding the entry
-- KEYS[2] task: the task hash {p}:task:<pod name> ({p}:task:- when the task is unknown)
-- KEYS[3] dead: the dead-letter stream {p}:dead
-- ARGV[1] group: the launchers' consumer group
-- ARGV[2] entry: the launch entry's id
-- ARGV[3] dead_reason: why it is dead-lettered ('' = no dead letter)
-- ARGV[4] raw: the raw launch message, kept in the dead letter
-- ARGV[5] dead_maxlen: approximate MAXLEN of the dead-letter stream
-- ARGV[6] base: the key base "{p}"; {p}:results:<owner> is derived from it
-- ARGV[7] state: the state to publish, failed ('' = publish nothing: the task is unknown)
-- ARGV[8] reason: the reason stored with the state
-- ARGV[9] event: the encoded TaskStateChanged
-- ARGV[10] maxlen: approximate MAXLEN of the result stream
-- ARGV[11] ttl: seconds the task hash lives after a final state
-- ARGV[12] now: epoch seconds, stored as `updated`
-- ARGV[13] live_pod: "<namespace>/<pod>" of the {p}:live member ('' = none)
-- ARGV[14] dispatch: the dispatch id of the failed launch ('' = whatever dispatch the record has);
--          the state is dropped when the record's current dispatch is another one
-- ARGV[15] owner: the owner the event was signed for ('' = unsigned)
-- ARGV[16] key_id: the signing key's id ('' = unsigned)
-- ARGV[17] sig: the event's signature for {p}:results:<owner>
-- ARGV[18] live: the live set of the launcher's cluster ({p}:live or {p}:watcher:cluster:<name>:live)
-- The state is dropped ({0, 'its pod exists: <state>'}) when the record shows the pod of that dispatch
-- pending or running: a launch ends without a pod only on a delivery that could not see it (e.g. a
-- redelivery to a launcher whose policy changed meanwhile), and a live task is never failed by one.
-- Returns {1, entry id, owner} when published, {0, why} otherwise ({0, 'no task'} when
-- state is '').

local stream = KEYS[1]
local task = KEYS[2]
local dead = KEYS[3]
local group = ARGV[1]
local entry = ARGV[2]
local dead_reason = ARGV[3]
local raw = ARGV[4]
local dead_maxlen = ARGV[5]
local base = ARGV[6]
local state = ARGV[7]
local reason = ARGV[8]
local event = ARGV[9]
local maxlen = ARGV[10]
local ttl = ARGV[11]
local now = ARGV[12]
local live_pod = ARGV[13]
local dispatch = ARGV[14]
local owner = ARGV[15]
local key_id = ARGV[16]
local sig = ARGV[17]
local live = ARGV[18]

redis.call('XACK', stream, group, entry)
redis.call('XDEL', stream, entry)
if dead_reason ~= '' then
  redis.call('XADD', dead, 'MAXLEN', '~', dead_maxlen, '*', 'reason', dead_reason, 'stream', stream,
             'entry', entry, 'task', task, 'm', raw)
end
if state == '' then return {0, 'no task'} end
local seen = redis.call('HMGET', task, 'state', 'dispatch')
if (seen[1] == 'pending' or seen[1] == 'running') and (dispatch == '' or seen[2] == dispatch) then
  return {0, 'its pod exists: ' .. seen[1]}
end
return publish(task, base, {
  state = state, reason = reason, event = event, maxlen = maxlen, ttl = ttl, now = now,
  live = live, live_pod = live_pod, dispatch = dispatch, any_dispatch = dispatch == '',
  owner = owner, key_id = key_id, sig = sig,
})
