-- adopt.lua: take ownership of tasks and read their last states, atomically (no event falls
-- between the new owner and the state it reads).
--
-- KEYS (every one): a task hash {p}:task:<pod name>
-- ARGV[1] owner: the adopting scheduler; its result stream gets the tasks' later events
-- Returns for each key, in order, {state, reason} ('' when none yet), or {} if the task is unknown.

local owner = ARGV[1]

local out = {}
for i, task in ipairs(KEYS) do
  if redis.call('EXISTS', task) == 1 then
    redis.call('HSET', task, 'owner', owner)
    local rec = redis.call('HMGET', task, 'state', 'reason')
    out[i] = {rec[1] or '', rec[2] or ''}
  else
    out[i] = {}
  end
end
return out
