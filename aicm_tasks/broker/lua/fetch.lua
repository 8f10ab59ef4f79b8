-- KEYS: queue, batch, held, consumers; ARGV: count, consumer, lease_s, first
-- The first FETCH of a batch registers it in the held set; every later one
-- (while the batch fills) requires it still to be there. Batch keys are never
-- reused, so membership is a fencing token: granted once, at creation, and
-- revoked for good by RECLAIM or SWEEP. A batch whose token was revoked takes
-- nothing more from the queue (returns nil) and can never be settled.
--#include _now

if ARGV[4] ~= '1' and redis.call('SISMEMBER', KEYS[3], KEYS[2]) == 0 then
  return false
end
local n = tonumber(ARGV[1])
local items = {}
if n > 0 then
  items = redis.call('LRANGE', KEYS[1], -n, -1)
  -- LTRIM before anything that may grow memory: see records.py on maxmemory.
  if #items > 0 then redis.call('LTRIM', KEYS[1], 0, -(#items) - 1) end
end
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], KEYS[2]) end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[2])
if #items > 0 then redis.call('RPUSH', KEYS[2], unpack(items)) end
return items
