-- publish.lua: publish one task state change if it is new (see _publish.lua), atomically; a
-- watcher's publish only while it still holds the watcher lease (see _fence.lua).
-- include: _fence.lua
-- include: _publish.lua
--
-- KEYS[1] task: the task hash {p}:task:<pod name>
-- ARGV[1] base: the key base "{p}"; {p}:results:<owner> is derived from it
-- ARGV[2] state: pending | running | succeeded | failed
-- ARGV[3] reason: the reason stored with the state
-- ARGV[4] event: the encoded TaskStateChanged
-- ARGV[5] maxlen: approximate MAXLEN of the result stream
-- ARGV[6] ttl: seconds the task hash lives after a final state
-- ARGV[7] now: epoch seconds, stored as `updated`
-- ARGV[8] live_pod: "<namespace>/<pod>" of the {p}:live member ('' = none)
-- ARGV[9] dispatch: the dispatch id the event's pod belongs to ('' for a pod without one)
-- ARGV[10] any_dispatch: '1' = the event belongs to whatever dispatch the record has, '0' = to dispatch
-- ARGV[11] token: the watcher's lease token ('' = not fenced: not a watcher)
-- ARGV[12] epoch: the lease epoch the watcher acquired ('' when not fenced)
-- ARGV[13] owner: the owner the event was signed for ('' = unsigned)
-- ARGV[14] key_id: the signing key's id ('' = unsigned)
-- ARGV[15] sig: the event's signature for {p}:results:<owner>
-- ARGV[16] live: the live set of the publisher's cluster ({p}:live or {p}:watcher:cluster:<name>:live)
-- ARGV[17] lease: the watcher lease of the publisher's cluster (its fence is <lease>:fence)
-- Returns {1, entry id, owner} when published, {0, why} otherwise ({0, 'not the lease holder'}
-- when token no longer holds the lease: nothing is written).

local task = KEYS[1]
local base = ARGV[1]
local state = ARGV[2]
local reason = ARGV[3]
local event = ARGV[4]
local maxlen = ARGV[5]
local ttl = ARGV[6]
local now = ARGV[7]
local live_pod = ARGV[8]
local dispatch = ARGV[9]
local any_dispatch = ARGV[10]
local token = ARGV[11]
local epoch = ARGV[12]
local owner = ARGV[13]
local key_id = ARGV[14]
local sig = ARGV[15]
local live = ARGV[16]
local lease = ARGV[17]

if not holds_lease(lease, token, epoch) then return {0, 'not the lease holder'} end
return publish(task, base, {
  state = state, reason = reason, event = event, maxlen = maxlen, ttl = ttl, now = now,
  live = live, live_pod = live_pod, dispatch = dispatch, any_dispatch = any_dispatch == '1',
  owner = owner, key_id = key_id, sig = sig,
})
