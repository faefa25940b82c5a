-- record_states.lua: read the owner, state and update time of many task records in one command
-- (the executor's reconciliation of its running tasks: one reply instead of one per task).
--
-- KEYS (every one): a task hash {p}:task:<pod name>
-- ARGV: none
-- Returns for each key, in order, {owner, state, updated}, each false (nil to the client) when
-- missing: all three for a record that is gone.

local out = {}
for i, task in ipairs(KEYS) do
  out[i] = redis.call('HMGET', task, 'owner', 'state', 'updated')
end
return out
