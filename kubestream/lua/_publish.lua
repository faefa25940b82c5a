-- _publish.lua: the state publication shared by publish.lua and fail_launch.lua.
-- A library: the loader prepends it to every script whose header has `-- include: _publish.lua`.
--
-- KEYS: none, ARGV: none (the including script binds its own and passes them in).
--
-- publish(task, base, ev) publishes one task state change if it is new, atomically:
--   task             the task hash {p}:task:<pod name> (one of the including script's KEYS)
--   base             the key base "{p}"; {p}:results:<owner> is derived from it, in the same hash slot as task
--   ev.state         pending | running | succeeded | failed
--   ev.reason        the reason stored with the state
--   ev.event         the encoded TaskStateChanged, XADDed as field `m`
--   ev.maxlen        approximate MAXLEN of the result stream
--   ev.ttl           seconds the task hash lives after a final state
--   ev.now           epoch seconds, stored as `updated`
--   ev.live          the live set of the pod's cluster ({p}:live, or {p}:watcher:cluster:<name>:live)
--   ev.live_pod      "<namespace>/<pod>" ('' = none): the live member is "<namespace>/<pod>/<dispatch>"; an
--                    event from a pod in another namespace than the record's is dropped (a look-alike pod)
--   ev.dispatch      the dispatch id the event's pod belongs to ('' for a pod without one)
--   ev.any_dispatch  true: the event belongs to whatever dispatch the record has (ev.dispatch ignored)
--   ev.owner         the owner the event was signed for ('' = not signed): a record that names another
--                    owner (adopted meanwhile) returns {0, 'owner changed'} and the caller signs again
--   ev.key_id        the signing key's id, XADDed as field `k` ('' = unsigned: no `k`, no `s`)
--   ev.sig           HMAC of the event for {p}:results:<ev.owner>, XADDed as field `s`
-- It drops the event for an unknown task, another dispatch than the record's, a pod in another
-- namespace than the record's, a revoked task,
-- a duplicate, anything after a final state and a regression (running after succeeded).
-- A final state removes its {p}:live member whether it is published or dropped (the pod is done).
-- Returns {1, entry id, owner} when published, {0, why} otherwise.

local function publish(task, base, ev)
  local rec = redis.call('HMGET', task, 'owner', 'state', 'revoked', 'dispatch', 'namespace')
  local owner, last, revoked, current, namespace = rec[1], rec[2], rec[3], rec[4] or '', rec[5]
  local dispatch = ev.dispatch
  if ev.any_dispatch then dispatch = current end
  local final = ev.state == 'succeeded' or ev.state == 'failed'
  local live = ev.live
  local member = ''
  if ev.live_pod ~= '' then member = ev.live_pod .. '/' .. dispatch end
  local function drop(why)
    if final and member ~= '' then redis.call('SREM', live, member) end
    return {0, why}
  end
  if not owner then return drop('unknown task') end
  if ev.owner ~= '' and owner ~= ev.owner then return {0, 'owner changed'} end
  if dispatch ~= current then return drop('stale dispatch') end
  local pod_namespace = string.match(ev.live_pod, '^([^/]+)/')
  if pod_namespace and namespace and namespace ~= '' and pod_namespace ~= namespace then
    return drop('other namespace: ' .. pod_namespace)
  end
  if revoked == '1' then return drop('revoked') end
  if last == ev.state then return drop('duplicate') end
  if last == 'succeeded' or last == 'failed' then return drop('already final: ' .. last) end
  local rank = {queued = 0, pending = 1, running = 2, succeeded = 3, failed = 3}
  if last and rank[last] and rank[ev.state] < rank[last] then
    return drop('stale: ' .. ev.state .. ' after ' .. last)
  end
  redis.call('HSET', task, 'state', ev.state, 'reason', ev.reason, 'updated', ev.now)
  local results = base .. ':results:' .. owner
  local id
  if ev.key_id ~= '' then
    id = redis.call('XADD', results, 'MAXLEN', '~', ev.maxlen, '*', 'm', ev.event, 'k', ev.key_id, 's', ev.sig)
  else
    id = redis.call('XADD', results, 'MAXLEN', '~', ev.maxlen, '*', 'm', ev.event)
  end
  if final then
    redis.call('EXPIRE', task, ev.ttl)
    if member ~= '' then redis.call('SREM', live, member) end
  elseif member ~= '' then
    redis.call('SADD', live, member)
  end
  return {1, id, owner}
end
