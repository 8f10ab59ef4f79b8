-- KEYS: consumers, queue, held (of the consumer), then every batch key the held
-- set listed when the caller read it; ARGV: consumer.
-- Every key is passed in, none built here: on Redis Cluster a script may touch
-- only keys of its own slot, and declaring them is what lets Redis check that.
-- Returns -1, moving nothing, when the lease was renewed meanwhile (the consumer
-- lives) or the held set no longer matches the keys passed (read it again).
--#include _now
--#include _return_batch

local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return -1 end
if tonumber(deadline) > now then return -1 end
if redis.call('SCARD', KEYS[3]) ~= #KEYS - 3 then return -1 end
for i = 4, #KEYS do
  if redis.call('SISMEMBER', KEYS[3], KEYS[i]) == 0 then return -1 end
end
local moved = 0
for i = 4, #KEYS do
  moved = moved + return_batch(KEYS[i], KEYS[2])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
