-- _publish.lua: the state publication shared by publish.lua and fail_launch.lua.
-- A library: the loader prepends it to every script whose header has `-- include: _publish.lua`.
--
-- KEYS: none, ARGV: none (the including script binds its own and passes them in).
--
-- publish(task, base, ev) publishes one task state change if it is new, atomically:
--   task             the task hash {p}:task:<pod name> (one of the including script's KEYS)
--   base             the key base "{p}"; {p}:results:<owner> and {p}:live are derived from it,
--                    in the same hash slot as task
--   ev.state         pending | running | succeeded | failed
--   ev.reason        the reason stored with the state
--   ev.event         the encoded TaskStateChanged, XADDed as field `m`
--   ev.maxlen        approximate MAXLEN of the result stream
--   ev.ttl           seconds the task hash lives after a final state
--   ev.now           epoch seconds, stored as `updated`
--   ev.live_member   "<namespace>/<pod>" for the {p}:live set ('' = none)
--   ev.dispatch      the dispatch id the event's pod belongs to ('' = any)
-- It drops the event for an unknown task, a pod of another dispatch, a revoked task,
-- a duplicate, anything after a final state and a regression (running after succeeded).
-- Returns {1, entry id, owner} when published, {0, why} otherwise.

local function publish(task, base, ev)
  local rec = redis.call('HMGET', task, 'owner', 'state', 'revoked', 'dispatch')
  local owner, last, revoked, current = rec[1], rec[2], rec[3], rec[4]
  if not owner then return {0, 'unknown task'} end
  if ev.dispatch ~= '' and current and current ~= '' and current ~= ev.dispatch then
    return {0, 'stale dispatch'}
  end
  if revoked == '1' then return {0, 'revoked'} end
  if last == ev.state then return {0, 'duplicate'} end
  if last == 'succeeded' or last == 'failed' then return {0, 'already final: ' .. last} end
  local rank = {queued = 0, pending = 1, running = 2, succeeded = 3, failed = 3}
  if last and rank[last] and rank[ev.state] < rank[last] then
    return {0, 'stale: ' .. ev.state .. ' after ' .. last}
  end
  redis.call('HSET', task, 'state', ev.state, 'reason', ev.reason, 'updated', ev.now)
  local id = redis.call('XADD', base .. ':results:' .. owner, 'MAXLEN', '~', ev.maxlen, '*', 'm', ev.event)
  if ev.state == 'succeeded' or ev.state == 'failed' then
    redis.call('EXPIRE', task, ev.ttl)
    redis.call('SREM', base .. ':live', ev.live_member)
  elseif ev.live_member ~= '' then
    redis.call('SADD', base .. ':live', ev.live_member)
  end
  return {1, id, owner}
end
