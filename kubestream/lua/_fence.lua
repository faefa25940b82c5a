-- _fence.lua: the watcher lease check of the scripts that write for the active watcher.
-- A library: the loader prepends it to every script whose header has `-- include: _fence.lua`.
--
-- KEYS: none, ARGV: none (the including script binds its own and passes them in).
--
-- holds_lease(lease, token, epoch) tells whether the caller still holds the watcher lease:
--   lease   the lease key of the caller's cluster ({p}:watcher:lease, or
--           {p}:watcher:cluster:<name>:lease); its fence is <lease>:fence (hash: token, epoch),
--           in the same hash slot as the caller's keys
--   token   the caller's lease token, unique per process ('' = not fenced, e.g. a launcher's write)
--   epoch   the lease epoch the caller acquired (a new one on every acquisition)
-- Returns true when token is '' or the lease exists and its fence holds this token and epoch.

local function holds_lease(lease, token, epoch)
  if token == '' then return true end
  if redis.call('EXISTS', lease) == 0 then return false end
  local fence = redis.call('HMGET', lease .. ':fence', 'token', 'epoch')
  return fence[1] == token and fence[2] == epoch
end
