-- publish.lua: publish one task state change if it is new (see _publish.lua), atomically.
-- include: _publish.lua
--
-- KEYS[1] task: the task hash {p}:task:<pod name>
-- ARGV[1] base: the key base "{p}"; {p}:results:<owner> and {p}:live are derived from it
-- ARGV[2] state: pending | running | succeeded | failed
-- ARGV[3] reason: the reason stored with the state
-- ARGV[4] event: the encoded TaskStateChanged
-- ARGV[5] maxlen: approximate MAXLEN of the result stream
-- ARGV[6] ttl: seconds the task hash lives after a final state
-- ARGV[7] now: epoch seconds, stored as `updated`
-- ARGV[8] live_member: "<namespace>/<pod>" for the {p}:live set ('' = none)
-- ARGV[9] dispatch: the dispatch id the event's pod belongs to ('' = any)
-- Returns {1, entry id, owner} when published, {0, why} otherwise.

local task = KEYS[1]
local base = ARGV[1]
local state = ARGV[2]
local reason = ARGV[3]
local event = ARGV[4]
local maxlen = ARGV[5]
local ttl = ARGV[6]
local now = ARGV[7]
local live_member = ARGV[8]
local dispatch = ARGV[9]

return publish(task, base, {
  state = state, reason = reason, event = event, maxlen = maxlen, ttl = ttl, now = now,
  live_member = live_member, dispatch = dispatch,
})
