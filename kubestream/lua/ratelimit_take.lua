-- ratelimit_take.lua: take tokens from the token bucket shared by all launchers. The clock is
-- Redis's own (TIME), so launchers on different hosts agree without synced clocks.
--
-- KEYS[1] bucket: the bucket hash {p}:ratelimit:create (`tokens`, `ts` in ms)
-- ARGV[1] rate: tokens added per second (> 0)
-- ARGV[2] burst: the bucket's size
-- ARGV[3] want: the tokens wanted
-- Returns 0 when granted, else the milliseconds to wait before trying again.

local bucket = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', bucket, 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= want then
  tokens = tokens - want
else
  wait = math.ceil((want - tokens) * 1000 / rate)
end
redis.call('HSET', bucket, 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)
return wait
